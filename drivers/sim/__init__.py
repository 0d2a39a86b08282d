"""Simulated locks: latency, faults and keypad events, for tests, the demo and benchmarks."""

from drivers.sim.driver import SimDriver

__all__ = ["SimDriver"]
