"""Benchmarks: reproducible measurements behind the defaults and the numbers in the docs."""
