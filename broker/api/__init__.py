"""The JSON API (``/api/...``), including the CLI sign-in endpoints."""
