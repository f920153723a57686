"""Request helpers and view data shared by the pages and the JSON API.

:mod:`broker.web` and :mod:`broker.api` both import from here; nothing here imports them.
"""
