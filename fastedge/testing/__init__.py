"""Test support for fastedge and its plugins, shipped in the package.

Small modules, each importable on its own:

- :mod:`.fakes`: fakes at the edges (inline thread runners, recording
  connections, a capturing datagram transport, an in-memory media source);
- :mod:`.stores`: a started SQLite store;
- :mod:`.mesh`: the in-memory mesh (real TLS, PB and membership over
  ``iosim``) and node descriptions;
- :mod:`.live`: in-process live nodes on that mesh;
- :mod:`.certs`: cluster CA and node certificates;
- :mod:`.dns`: a GeoIP database of known places and a GeoDNS harness.

Process supervisors (PostgreSQL, SeaweedFS) and whole-node starters are not
shipped: they live in the repository's ``tests/support/``.
"""
