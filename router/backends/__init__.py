"""Upstream backends: the replay backend that plays a routing dataset's models."""
