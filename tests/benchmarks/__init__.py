"""Tests of the benchmarks package (benchmarks/ at the repository root), one file per benchmark module."""
