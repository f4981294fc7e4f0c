"""Benchmarks: scripts that print a speed ratio against the naive way (DESIGN section 5); not tests."""
