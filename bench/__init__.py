"""Benchmarks: ``python -m bench --help``.  Not part of the test suite."""
