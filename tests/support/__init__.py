"""What the suite and the benchmarks need beyond the shipped :mod:`fastedge.testing`:
process supervisors (PostgreSQL, SeaweedFS), whole-node starters, an HTTP/2 client."""
