"""The plant as code: one document (YAML or JSON) describing sites, zones, assets with their
declared endpoints, and vendor organisations with their contracts.

``parse`` validates a document (path-named errors), ``load_yaml`` keeps line numbers for them,
``export`` reads the database, ``diff`` plans the changes, ``apply`` makes them. docs/plant.md.

Keys: sites by name, zones by site and name, assets by name, vendor orgs by slug, contracts by
org and reference. Agents are not part of the file (they enrol); an endpoint names the agent
that reaches it (by name), and an asset keeps its own agent as the fallback.
Removing an asset that has history (requests, grants, sessions) is refused unless
``archive``: then it is archived (``archived_at``; no new requests, out of policy data, out of
the export). Zones, sites and vendor orgs still used by anything outside the file (agents,
join tokens, archived assets, users) are never removed. Nor is a contract with history
(requests its organisation's users made, since it started, for assets it covers): it is
the record of why they were allowed; end it by moving ``valid_until`` instead.

Modules: :mod:`.document` (parse), :mod:`.yamlfile`, :mod:`.reading` (export),
:mod:`.planning` (diff), :mod:`.removal` (why a removal is blocked), :mod:`.applying`
(apply). This package re-exports their public names, so callers import from ``sessions.plant``.
"""

from sessions.plant.applying import apply
from sessions.plant.document import PlantDoc, PlantError, parse
from sessions.plant.planning import Change, Plan, diff
from sessions.plant.reading import export
from sessions.plant.yamlfile import line_of, load_yaml

__all__ = [
    "Change",
    "Plan",
    "PlantDoc",
    "PlantError",
    "apply",
    "diff",
    "export",
    "line_of",
    "load_yaml",
    "parse",
]
