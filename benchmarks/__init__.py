"""Benchmarks for Treeline's planners (run ``python -m benchmarks``)."""
