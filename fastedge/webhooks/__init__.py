"""Outbound webhooks: tenants' endpoints, the delivery worker, signing,
the outbound agent (proxy, no server-side request forgery) and the tenant
API (docs/webhooks.md). The outbox itself is written by the store, in the
transaction of each change (:mod:`fastedge.store.outbox`)."""
