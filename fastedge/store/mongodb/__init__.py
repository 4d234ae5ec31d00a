"""The MongoDB backend (``store.backend = "mongodb"``): a replica set through
txmongo. :mod:`.store` holds the operations, :mod:`.core` the routing,
tokens and failover, and :mod:`.txmongo_gaps` every workaround for what
txmongo lacks."""
