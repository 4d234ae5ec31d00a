"""The comment database: one interface, several backends.

Every store method takes a required, keyword-only ``read_preference``; the
callers all the way up decide how to read. Writes always go to the primary
and accept only ``ReadPreference.PRIMARY``.
"""
