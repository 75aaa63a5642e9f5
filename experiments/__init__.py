"""Experiment scripts (a package so tests can import their pure helpers)."""
