"""Sluiceway: a throughput-first inference backend."""

__version__ = "0.1.0"
