"""Conduit sessions package."""
