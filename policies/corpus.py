"""Policy inputs for checking one evaluator against another (:mod:`policies.rvm`).

Before the embedded engine lets regorus's compiled VM decide, it asks it and the reference
interpreter the same questions and requires the same answers. The questions:

- :func:`contract_corpus`: the input contract of docs/policy.md, each part of it varied —
  every role, kind of action, operation class and Purdue level; with and without a grant,
  grants in every state, late, early, someone else's, limited to maintenance windows (inside,
  outside, overnight, malformed windows); contracts that cover, expire or cover nothing; the
  lockout on, off, unset or ill typed; no plant data at all; and every required field
  missing or ill typed, for a connection, a request and an approval. Each comes with its own
  ``data`` document.
- :func:`data_corpus`: questions about the plant the broker actually pushed (its assets, sites
  and vendor organisations), asked with that data.

Both are deterministic: the same arguments give the same list.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping
from typing import Any

Doc = dict[str, Any]
Case = tuple[Doc, Doc]  # (input, data)

NOW = "2025-03-04T21:30:00Z"  # a Tuesday: 22:30 in Europe/Berlin, inside the Tuesday window
SITE, OTHER_SITE = "Riverside Plant", "Lakeside Works"
ASSET, ORG = "plc-press-3", "acme-automation"
CONNECTIONS = ("ssh", "sftp", "tcp", "web_terminal")
CLASSES = ("read_only", "tune", "program", "firmware")
_DROP = object()


def _merge(base: Any, patch: Any) -> Any:
    """``base`` with ``patch`` deep-merged in: objects merge, ``_DROP`` removes, others replace."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is _DROP:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _contract(**fields: Any) -> Doc:
    return {
        "site": SITE,
        "asset": None,
        "valid_from": "2025-01-01T00:00:00Z",
        "valid_until": "2026-01-01T00:00:00Z",
        "reference": "SVC-1",
        **fields,
    }


def plant() -> Doc:
    """The default ``data`` document: two sites, three assets, two vendor organisations."""
    return {
        "plant": {
            "sites": {
                SITE: {
                    "timezone": "Europe/Berlin",
                    "maintenance_windows": [
                        {"days": ["tue"], "start": "22:00", "end": "02:00"},
                        {"days": ["sat"], "start": "08:00", "end": "12:00"},
                    ],
                },
                OTHER_SITE: {"timezone": "America/Chicago", "maintenance_windows": []},
            },
            "assets": {
                ASSET: {
                    "site": SITE,
                    "zone": "press-line-control",
                    "purdue_level": 1,
                    "criticality": "critical",
                    "owner_group": "ot-press-line",
                    "protocols": ["modbus", "ssh"],
                    "endpoints": _endpoints(),
                },
                "hmi-press-3": {
                    "site": SITE,
                    "zone": "press-line-supervisory",
                    "purdue_level": 2,
                    "criticality": "high",
                    "owner_group": "ot-press-line",
                    "protocols": ["vnc"],
                    "endpoints": [
                        {
                            "name": "vnc",
                            "host": "10.0.2.7",
                            "port": 5900,
                            "protocol": "vnc",
                            "inspected": False,
                            "settings": {},
                        }
                    ],
                },
                "historian": {
                    "site": SITE,
                    "zone": "dmz",
                    "purdue_level": 3,
                    "criticality": "medium",
                    "owner_group": "ot-press-line",
                    "protocols": ["ssh"],
                },
            },
            "vendor_orgs": {
                ORG: {"contracts": [_contract()]},
                "globex-controls": {
                    "contracts": [_contract(reference="SVC-9", site=OTHER_SITE)],
                },
            },
            "lockout": {"vendors": False, "reason": ""},
        }
    }


def _endpoints() -> list[Doc]:
    """plc-press-3's declared endpoints: SSH on 22 (login maint), Modbus on 502."""
    logins = {op: ["maint"] for op in ("read_only", "tune", "program", "firmware")}
    tune = [{"table": "holding_registers", "first": 40001, "last": 40100}]
    return [
        {
            "name": "ssh",
            "host": "10.0.1.5",
            "port": 22,
            "protocol": "ssh",
            "inspected": False,
            "settings": {"logins": logins},
        },
        {
            "name": "plc",
            "host": "10.0.1.5",
            "port": 502,
            "protocol": "modbus",
            "inspected": True,
            "settings": {"unit_ids": [1], "write_ranges": {"tune": tune}},
        },
    ]


def base_input() -> Doc:
    """An allowed decision: vendor Alice's read-only ``ssh`` to plc-press-3 under grant g-1."""
    return {
        "user": {
            "sub": "vendor-alice",
            "email": "alice@acme-automation.example",
            "name": "Alice Vendor",
            "groups": ["vendors", ORG],
            "roles": ["vendor"],
            "amr": ["pwd", "mfa"],
            "acr": None,
            "idp": "corp",
            "vendor_org": ORG,
        },
        "asset": {
            "name": ASSET,
            "site": SITE,
            "zone": "press-line-control",
            "purdue_level": 1,
            "criticality": "critical",
            "owner_group": "ot-press-line",
            "labels": {},
            "protocols": ["modbus", "ssh"],
            "endpoints": _endpoints(),
        },
        "action": {
            "kind": "ssh",
            "port": 22,
            "ports": [22, 502],
            "operation_class": "read_only",
            "login": "maint",
        },
        "grant": {
            "id": "g-1",
            "requester": "vendor-alice",
            "approvers": ["owner-olga"],
            "starts_at": "2025-03-04T20:30:00Z",
            "ends_at": "2025-03-04T23:30:00Z",
            "ticket": "CHG-1042",
            "state": "approved",
            "maintenance_window_only": False,
            "operation_class": "read_only",
            "ports": [22, 502],
            "login": "maint",
        },
        "context": {
            "now": NOW,
            "source_ip": "192.0.2.10",
            "agent_online": True,
            "plant_state": None,
        },
    }


ADMIN = {"sub": "admin-ada", "roles": ["admin"], "vendor_org": None, "groups": ["ot-admins"]}
APPROVER = {
    "sub": "owner-olga",
    "roles": ["approver"],
    "vendor_org": None,
    "groups": ["ot-press-line"],
    "amr": ["pwd"],
}
USERS: tuple[Doc, ...] = (
    {},  # the vendor
    {"amr": ["pwd"]},
    {"amr": ["otp", "hwk"], "vendor_org": "globex-controls"},
    {"vendor_org": None},
    {"vendor_org": "unknown-org"},
    ADMIN,
    ADMIN | {"roles": ["admin", "vendor"], "vendor_org": ORG},
    APPROVER,
    APPROVER | {"groups": ["ot-packaging"]},
    APPROVER | {"roles": ["approver", "admin"]},
    {"sub": "sec-sam", "roles": ["security"], "vendor_org": None},
    {"sub": "stranger", "roles": [], "groups": [], "vendor_org": None},
)
GRANTS: tuple[Any, ...] = (
    {},
    _DROP,
    None,
    {"state": "active"},
    {"state": "pending", "approvers": []},
    {"state": "pending", "requester": "vendor-bob", "approvers": []},
    {"state": "revoked"},
    {"starts_at": "2025-03-04T21:30:01Z"},
    {"ends_at": NOW},
    {"requester": "vendor-bob"},
    {"maintenance_window_only": True},
    {"maintenance_window_only": True, "ends_at": "2025-03-05T21:30:00.5+01:00"},
)


def _variants() -> Iterator[tuple[Doc, Doc]]:
    """(input patch, data patch) pairs."""
    yield from _who_and_what()
    yield from _assets_and_time()
    yield from _contracts()
    yield from _lockouts_and_windows()


def _who_and_what() -> Iterator[tuple[Doc, Doc]]:
    # Who, doing what, under which grant (a spread, not the full product).
    for i, (user, kind) in enumerate(
        itertools.product(USERS, (*CONNECTIONS, "request", "approve"))
    ):
        grant = GRANTS[i % len(GRANTS)]
        level = (1, 3, 2, 5, 1, 4)[i % 6]
        yield (
            {
                "user": user,
                "action": {"kind": kind, "operation_class": CLASSES[i % 4]},
                "asset": {"purdue_level": level},
                "grant": grant,
            },
            {},
        )
    # Every grant variant on a vendor connection and an admin's.
    for grant, user in itertools.product(GRANTS, ({}, ADMIN)):
        yield {"user": user, "grant": grant}, {}


def _assets_and_time() -> Iterator[tuple[Doc, Doc]]:
    # Operation classes, Purdue levels, criticality, assets the data does (not) know.
    for op, level in itertools.product(CLASSES, range(6)):
        crit = ("low", "medium", "high", "critical")[level % 4]
        yield (
            {
                "action": {"operation_class": op},
                "asset": {"purdue_level": level, "criticality": crit},
            },
            {},
        )
    for name, op in itertools.product(("hmi-press-3", "historian", "unknown-asset"), CLASSES):
        yield {"asset": {"name": name}, "action": {"operation_class": op}}, {}
    # Time: now inside/outside the window, across midnight and daylight saving, odd formats.
    for now, window_only in itertools.product(
        (
            NOW,
            "2025-03-04T23:59:00Z",
            "2025-03-05T01:00:00Z",
            "2025-03-04T20:59:59Z",
            "2025-04-01T20:30:00Z",
            "2025-04-01T19:30:00Z",
            "2025-03-08T07:00:00Z",
            "2025-03-04T22:30:00+01:00",
            "2025-03-04T21:30:00.123Z",
        ),
        (False, True),
    ):
        yield (
            {
                "context": {"now": now},
                "grant": {
                    "starts_at": "2025-03-01T00:00:00Z",
                    "ends_at": "2025-04-30T00:00:00Z",
                    "maintenance_window_only": window_only,
                },
            },
            {},
        )
    for agent in (False, None, "yes"):
        yield {"context": {"agent_online": agent}}, {}


def _contracts() -> Iterator[tuple[Doc, Doc]]:
    contracts: list[list[Doc]] = [
        [],
        [_contract(valid_until=NOW)],
        [_contract(valid_from="2025-03-04T21:30:01Z")],
        [_contract(site=None, asset=ASSET, reference="SVC-7")],
        [_contract(asset=ASSET, reference="SVC-8")],
        [_contract(site=OTHER_SITE)],
        [_contract(site=None, asset=None)],
        [_contract(), _contract(reference="SVC-2", valid_until="2025-02-01T00:00:00Z")],
        [_contract(valid_until="2025-02-01T00:00:00Z"), _contract(reference="SVC-3", asset=ASSET)],
    ]
    for cs, kind in itertools.product(contracts, ("ssh", "request")):
        grant = _DROP if kind == "request" else {}
        yield (
            {"action": {"kind": kind}, "grant": grant},
            {"plant": {"vendor_orgs": {ORG: {"contracts": cs}}}},
        )


def _lockouts_and_windows() -> Iterator[tuple[Doc, Doc]]:
    """The lockout, the sites' windows, no data at all."""
    lockouts: tuple[Doc, ...] = (
        {"vendors": True, "reason": "incident INC-7"},
        {"vendors": True},
        {"vendors": True, "reason": 7},
        {"reason": "flag missing"},
        {"vendors": "yes"},
        {"vendors": None},
    )
    for lockout, user in itertools.product(
        lockouts,
        ({}, ADMIN, ADMIN | {"roles": ["admin", "vendor"], "vendor_org": ORG}),
    ):
        for kind in ("ssh", "request"):
            yield (
                {"user": user, "action": {"kind": kind}},
                {"plant": {"lockout": {"vendors": _DROP, "reason": _DROP, **lockout}}},
            )
    windows: list[Any] = [
        [{"days": ["tue"], "start": "22:00", "end": "22:00"}],
        [{"days": ["mon"], "start": "22:00", "end": "02:00"}],
        [{"days": ["tue"], "start": "21:00", "end": "23:00"}],
        [{"days": "tue", "start": "22:00", "end": "02:00"}],
        [{"days": ["tue"], "start": "24:00", "end": "02:00"}],
        [{"days": ["tue"], "start": 2200, "end": "02:00"}],
        [{"days": [1], "start": "22:00", "end": "02:00"}],
        [{"start": "22:00", "end": "02:00"}],
        [],
    ]
    for w in windows:
        yield (
            {"grant": {"maintenance_window_only": True}},
            {"plant": {"sites": {SITE: {"maintenance_windows": w}}}},
        )
    yield {"grant": {"maintenance_window_only": True}}, {"plant": {"sites": {SITE: _DROP}}}
    for user in ({}, ADMIN):
        yield {"user": user}, {"plant": _DROP}
    yield {"user": ADMIN, "asset": {"purdue_level": 3}}, {"plant": {"lockout": _DROP}}


# Fields the default policy requires, with wrong values to try (None: the field is missing).
BAD_FIELDS: dict[str, tuple[Any, ...]] = {
    "user": (None, "alice", []),
    "asset": (None, 3),
    "action": (None, "ssh"),
    "context": (None, []),
    "user.sub": (None, "", 7),
    "user.roles": (None, "vendor", [1]),
    "user.groups": (None, "vendors", [7]),
    "user.amr": (None, "mfa", [1, "otp"]),
    "user.vendor_org": (5, ["acme-automation"], _DROP),
    "asset.name": (None, "", 3),
    "asset.site": (None, "", 3),
    "asset.purdue_level": (None, -1, 6, 1.5, "1", True),
    "asset.criticality": (None, "severe"),
    "asset.owner_group": (None, "", 5),
    "action.kind": (None, "telnet", "SSH"),
    "action.operation_class": (None, "write"),
    "context.now": (
        None,
        "2025-03-04 21:30:00",
        "2025-02-30T10:00:00Z",
        "2024-02-29T21:30:00Z",
        "2025-03-04T25:00:00Z",
        "2025-03-04t21:30:00z",
        "2025-03-04T21:30:00",
        "2025-03-04T21:30:00Z 2025-03-04T21:30:00Z",
        1741123800,
    ),
    "context.agent_online": (None, "yes", 1),
    "grant": ("g-1", [1]),
    "grant.id": (None, "", 7),
    "grant.requester": (None, 5),
    "grant.approvers": (None, "owner-olga"),
    "grant.starts_at": (None, "2025-13-01T00:00:00Z", "2024-02-29T00:00:00Z"),
    "grant.ends_at": (None, "soon", "2025-03-04T21:30:00"),
    "grant.state": (None, "APPROVED", 1),
    "grant.maintenance_window_only": (None, "false"),
}


def _malformed() -> Iterator[tuple[Doc, Doc]]:
    """Each required field missing or ill typed, for a connection, a request and an approval."""
    kinds: tuple[tuple[Doc, Any], ...] = (
        ({}, {}),
        ({"action": {"kind": "request"}}, {}),
        ({"user": APPROVER, "action": {"kind": "approve"}}, {"state": "pending", "approvers": []}),
    )
    for (patch, grant), (path, values) in itertools.product(kinds, BAD_FIELDS.items()):
        for value in values:
            edit: Any = _DROP if value is None else value
            for part in reversed(path.split(".")):
                edit = {part: edit}
            yield _merge({**patch, "grant": grant}, edit), {}


def contract_corpus() -> list[Case]:
    """About 450 (input, data) pairs over the whole input contract (see the module doc)."""
    base, data = base_input(), plant()
    cases: list[Case] = [(base, data)]
    for input_patch, data_patch in itertools.chain(_variants(), _malformed()):
        cases.append((_merge(base, input_patch), _merge(data, data_patch)))
    return cases


def data_corpus(data: Mapping[str, Any], *, max_assets: int = 8) -> list[Case]:
    """Questions about the plant in ``data`` (``{"plant": ...}``), asked with ``data``.

    For each of the first ``max_assets`` assets (by name) and its site: a connection and a
    request by a vendor of each organisation with a contract for that site or asset, an
    admin's connection, and an approval by the asset's owner group. Empty when ``data``
    has no assets.
    """
    plant_doc = data.get("plant")
    if not isinstance(plant_doc, Mapping):
        return []
    assets = plant_doc.get("assets")
    orgs = plant_doc.get("vendor_orgs")
    if not isinstance(assets, Mapping):
        return []
    org_names = sorted(str(o) for o in orgs) if isinstance(orgs, Mapping) else []
    doc = dict(data)
    cases: list[Case] = []
    base = base_input()
    for name in sorted(str(a) for a in assets)[:max_assets]:
        fields = assets[name] if isinstance(assets[name], Mapping) else {}
        asset = {"name": name, **fields}
        users: list[Doc] = [ADMIN, {"vendor_org": None, "roles": ["vendor"]}]
        users += [{"vendor_org": org} for org in org_names[:4]]
        for user, (kind, op) in itertools.product(
            users, (("ssh", "read_only"), ("tcp", "tune"), ("request", "program"))
        ):
            grant: Any = _DROP if kind == "request" else {}
            cases.append(
                (
                    _merge(
                        base,
                        {
                            "user": user,
                            "asset": asset,
                            "action": {"kind": kind, "operation_class": op},
                            "grant": grant,
                        },
                    ),
                    doc,
                )
            )
        owner = fields.get("owner_group")
        approver = APPROVER | {"groups": [owner] if isinstance(owner, str) else []}
        cases.append(
            (
                _merge(
                    base,
                    {
                        "user": approver,
                        "asset": asset,
                        "action": {"kind": "approve"},
                        "grant": {"state": "pending", "approvers": []},
                    },
                ),
                doc,
            )
        )
    return cases
