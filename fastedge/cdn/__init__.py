"""The media CDN: ``/media/<tenant>/<key>`` from a local cache of S3 origins.

Pure logic: :mod:`.keys` (request paths and keys), :mod:`.semantics`
(ranges, validators, dates), :mod:`.cache` (the disk index and the memory
tier). Twisted adapters: :mod:`.origin` (S3 over treq), :mod:`.fill`
(coalesced downloads), :mod:`.resource` (the HTTP resource),
:mod:`.manage` (upload and purge in the tenant API). :mod:`.service` wires
them and is the only module that touches the reactor.
"""
