"""Conduit agents package."""
