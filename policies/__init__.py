"""Conduit policies package."""
