"""The ``dns`` child: an authoritative GeoDNS server answering each
deployment's names with its nearest live nodes."""
