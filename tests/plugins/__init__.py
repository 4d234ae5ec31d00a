"""A plugin package for tests: Twisted plugins ops would drop into
``twisted/plugins/``, found here with ``getPlugins(..., tests.plugins)``."""
