"""Helpers and fixtures shared by the test directories; never a test module itself.

Test modules import from here and from nowhere else under ``tests/``; the fixtures are
registered by ``tests/conftest.py`` (and by directory conftests that override them).

* :mod:`~tests.support.polling`: ``wait_for``, poll-with-deadline.
* :mod:`~tests.support.processes`: ``FerryProcess`` (a ``ferry`` child process),
  ``processes_mentioning``, ``data_dir``.
* :mod:`~tests.support.sentinel`: ``SentinelServer``, a real Redis Sentinel.
* :mod:`~tests.support.tls`: X.509 material (CAs, leaves, self-signed) and ``FIXTURES``.
* :mod:`~tests.support.http`: the ``http`` session fixture (``http_timeout``),
  ``fresh_get``, ``get_json``, ``http_ok``, ``wait_http_ok`` (and ``wait_http_ok_sync``,
  over urllib, for synchronous module fixtures).
* :mod:`~tests.support.control_planes`: ``start_control_plane`` and the
  ``control_planes`` fixture (in-process control planes).
* :mod:`~tests.support.admin`: ``AdminClient`` (per-call ``headers`` and ``data``;
  ``text_fallback`` for answers that may not be JSON), ``admin``/``admin_call`` by URL, and
  the in-process Admin app: ``serve_admin``, the ``store`` and ``admin`` fixtures
  (registered by ``tests/integration/conftest.py``), ``FixedDataPlanes``, ``call``,
  ``make``, ``change_stream``.
* :mod:`~tests.support.fake_data_planes`: ``FakeDataPlane``, a cluster stream driven by
  hand, and the ``dps`` fixture that opens them (its class: the ``data_plane_kind``
  fixture, overridden by a module for a subclass; both registered by
  ``tests/integration/conftest.py``).
* :mod:`~tests.support.backends`: target servers (``Backend``, ``RawBackend``,
  ``ScriptedBackend``, ``FlipBackend``, ``TlsBackend``, the ``backends`` fixture).
* :mod:`~tests.support.proxy`: the proxy in-process and raw-socket HTTP/1.1 clients
  (``connect``, ``read_response``, ``read_to_eof``, ``assert_closed``, ``body_json``).
* :mod:`~tests.support.metrics`: ``Scrape``, a parsed ``/metrics`` answer.
* :mod:`~tests.support.ferry_cluster`: ``Cluster`` of ``ferry`` child processes.
* :mod:`~tests.support.kong`: the Kong spec cluster, spec servers, DNS zone and helpers
  (Kong's ``balancer_utils``: ``add_upstream``, ``healthchecks_config``, …).
"""
