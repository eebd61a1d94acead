"""Performance benchmarks (not tests): `python -m adakd.bench.<name> --json`."""
