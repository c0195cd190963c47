"""Builds the compiled hot path (mypyc) unless FERRY_NO_EXTENSIONS is set.

Everything else about the package is in pyproject.toml; the module list is
data_plane/hot_path.py's (read without importing the package).
"""

import os
import runpy

from setuptools import setup

hot = runpy.run_path(os.path.join("data_plane", "hot_path.py"))
ext_modules = []
if not hot["extensions_disabled"]():
    from mypyc.build import mypycify

    ext_modules = mypycify(
        [str(hot["source_path"](m).relative_to(os.getcwd())) for m in hot["HOT_MODULES"]],
        opt_level="3",
        group_name=hot["GROUP_NAME"],
    )
setup(ext_modules=ext_modules)
