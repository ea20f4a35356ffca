"""Loopback servers that stand in for the outside world in the data-phase tests."""
