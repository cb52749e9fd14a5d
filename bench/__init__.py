"""Benchmarks: side-by-side measurements on real components, reported as ratios."""
