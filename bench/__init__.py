"""Benchmarks: scripts that print a speed ratio against the naive way (docs/design.md section 5); not tests."""
