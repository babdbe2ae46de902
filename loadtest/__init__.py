"""Hotspot simulator and benchmarks."""
