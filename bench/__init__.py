"""Benchmarks of Agent Server: each script starts the servers it needs and prints a table.

See bench/README.md for how to run them and docs/performance.md for measured figures.
"""
