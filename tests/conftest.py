"""Plugins shared by every suite."""

pytest_plugins = ["tests.reliability.leakscan"]
