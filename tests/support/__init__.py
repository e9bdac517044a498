"""Helpers shared by the test suite: real processes, free ports, waiting with timeouts."""
