"""Serving benchmarks: the gateway's overhead over direct upstream calls and the minimal
mock upstream they use."""
