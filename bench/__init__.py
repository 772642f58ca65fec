"""Benchmark harness for Ovi: `python -m bench [--small] [--out PATH]` (see README.md)."""
