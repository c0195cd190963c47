"""Builds the compiled hot path (mypyc) unless FERRY_NO_EXTENSIONS is set.

Everything else about the package is in pyproject.toml; the module list is
data_plane/hot_path.py's (read without importing the package).
"""

import os
import runpy

from setuptools import setup
from setuptools.command.build_ext import build_ext

hot = runpy.run_path(os.path.join("data_plane", "hot_path.py"))
ext_modules = []
cmdclass = {}
if not hot["extensions_disabled"]():
    from mypyc.build import mypycify

    # What mypyc is about to read (it reads the sources inside mypycify): recorded once
    # the C is compiled, so that a source edited meanwhile is seen as not compiled.
    compiled_digests = hot["source_digests"]()

    class BuildAndRecord(build_ext):
        """build_ext, then the record data_plane/hot_path.py checks in a checkout."""

        def run(self) -> None:
            super().run()
            hot["write_build_record"](compiled_digests)

    cmdclass["build_ext"] = BuildAndRecord
    ext_modules = mypycify(
        [str(hot["source_path"](m).relative_to(os.getcwd())) for m in hot["HOT_MODULES"]],
        opt_level="3",
        group_name=hot["GROUP_NAME"],
    )
setup(ext_modules=ext_modules, cmdclass=cmdclass)
