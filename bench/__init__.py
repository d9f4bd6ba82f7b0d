"""Benchmarks: each module prints a table and writes it as markdown to bench/results/."""
