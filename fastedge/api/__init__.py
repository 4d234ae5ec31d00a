"""The comment API: the public widget API and the tenant (manage) API."""
