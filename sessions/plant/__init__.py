"""The plant as code: one document (YAML or JSON) describing sites, zones, assets with their
declared endpoints, and vendor organisations with their contracts.

``parse`` validates a document (path-named errors), ``load_yaml`` keeps line numbers for them,
``export`` reads the database, ``diff`` plans the changes, ``apply`` makes them. docs/plant.md.
"""

from sessions.plant.document import PlantDoc, PlantError, parse
from sessions.plant.sync import Change, Plan, apply, diff, export
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
