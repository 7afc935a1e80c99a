"""Benchmarks: each beside a baseline of the same work, measured in the same run."""
