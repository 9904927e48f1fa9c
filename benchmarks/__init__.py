"""Benchmarks of flowengine against its peers and against a floor.

Run them with `python benchmarks/run.py`; the results go to
docs/benchmarks.md and docs/benchmarks.json. Every benchmark talks only to
loopback servers it starts itself, except the Redis and PostgreSQL store
benchmarks, which use the servers named by --redis-url and --postgres-url.
"""
