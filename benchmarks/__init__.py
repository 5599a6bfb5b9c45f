"""Benchmarks of synaps-agent: ``python -m benchmarks.NAME [--smoke] [--out DIR]``."""
