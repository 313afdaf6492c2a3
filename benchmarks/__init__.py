"""Benchmarks: each writes benchmarks/results/<name>.json and <name>.md."""
