"""The benchmark suite (``python -m benchmarks``, docs/performance.md)."""
