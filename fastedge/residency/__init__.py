"""Data residency: a tenant belongs to one deployment, and only that
deployment's nodes serve it.

:mod:`.directory` answers "which deployment is this tenant's?" (the tenant
record in this deployment's store, then the other deployments through the
mesh), :mod:`.gate` refuses a request for another deployment's tenant with
``421 Misdirected Request`` naming the right host, before any handler reads
anything. ``docs/residency.md`` has the rules.
"""
