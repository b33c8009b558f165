"""The benchmarks: scripts that measure the worker, and their own tests (bench/tests)."""
