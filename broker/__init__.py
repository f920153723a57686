"""Conduit broker package."""
