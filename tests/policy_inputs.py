"""Policy input and data documents for tests: valid defaults, overridden by keyword.

The defaults describe one allowed decision: vendor Alice (acme-automation, MFA) opening an
``ssh`` session for read-only work on ``plc-press-3`` (Purdue level 1, critical, Riverside
Plant) under her approved grant ``g-1``, with the asset's agent online, on Tuesday
2025-03-04 at 22:30 Berlin time (inside the site's Tuesday 22:00-02:00 window).

``make_input(user={"roles": ["admin"]}, grant=None)`` merges the given fields into the
defaults (``grant=None`` sends ``"grant": null``); :func:`without` drops a field.
:func:`generate_corpus` builds a deterministic, tagged mix of allowed and denied cases that
exercises every default rule (``tests/test_policy_differential.py``).
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

NOW = "2025-03-04T21:30:00Z"  # a Tuesday; 22:30 in Europe/Berlin (CET, UTC+1)
SITE = "Riverside Plant"
ASSET = "plc-press-3"
ORG = "acme-automation"
CONNECTION_KINDS = ("ssh", "sftp", "tcp", "web_terminal")
OPERATION_CLASSES = ("read_only", "tune", "program", "firmware")
_DEFAULT = object()


def iso(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix, as the broker sends it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def at(text: str, **delta: float) -> str:
    """``text`` (RFC 3339) shifted by a timedelta, e.g. ``at(NOW, hours=-1)``."""
    return iso(datetime.fromisoformat(text) + timedelta(**delta))


def make_user(**fields: Any) -> dict[str, Any]:
    user: dict[str, Any] = {
        "sub": "vendor-alice",
        "email": "alice@acme-automation.example",
        "name": "Alice Vendor",
        "groups": ["vendors", ORG],
        "roles": ["vendor"],
        "amr": ["pwd", "mfa"],
        "acr": "urn:mfa",
        "idp": "corp",
        "vendor_org": ORG,
    }
    user.update(fields)
    return user


def make_asset(**fields: Any) -> dict[str, Any]:
    asset: dict[str, Any] = {
        "name": ASSET,
        "site": SITE,
        "zone": "press-line-control",
        "purdue_level": 1,
        "criticality": "critical",
        "owner_group": "ot-press-line",
        "labels": {"line": "press"},
        "protocols": ["modbus", "ssh"],
        "endpoints": make_endpoints(),
    }
    asset.update(fields)
    return asset


SSH_LOGINS = {op: ["maint"] for op in ("read_only", "tune", "program", "firmware")}
TUNE_RANGES = [{"table": "holding_registers", "first": 40001, "last": 40100}]


def make_endpoints() -> list[dict[str, Any]]:
    """The default asset's declared endpoints: SSH on 22 (login maint), Modbus on 502."""
    return [
        {
            "name": "ssh",
            "host": "10.0.1.5",
            "port": 22,
            "protocol": "ssh",
            "inspected": False,
            "settings": {"logins": SSH_LOGINS},
        },
        {
            "name": "plc",
            "host": "10.0.1.5",
            "port": 502,
            "protocol": "modbus",
            "inspected": True,
            "settings": {"unit_ids": [1], "write_ranges": {"tune": TUNE_RANGES}},
        },
    ]


def make_action(**fields: Any) -> dict[str, Any]:
    action: dict[str, Any] = {
        "kind": "ssh",
        "port": 22,
        "ports": [22, 502],
        "operation_class": "read_only",
        "login": "maint",
    }
    if fields.get("kind") == "tcp" and "port" not in fields:
        action.update(port=502, login=None)  # a forward reaches the Modbus endpoint
    action.update(fields)
    return action


def make_grant(**fields: Any) -> dict[str, Any]:
    grant: dict[str, Any] = {
        "id": "g-1",
        "requester": "vendor-alice",
        "approvers": ["owner-olga"],
        "starts_at": at(NOW, hours=-1),
        "ends_at": at(NOW, hours=2),
        "ticket": "CHG-1042",
        "state": "approved",
        "maintenance_window_only": False,
        "operation_class": "read_only",
        "ports": [22, 502],
        "login": "maint",
    }
    grant.update(fields)
    return grant


def make_context(**fields: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "now": NOW,
        "source_ip": "127.0.0.1",
        "agent_online": True,
        "plant_state": "running",
    }
    context.update(fields)
    return context


def make_input(
    *,
    user: dict[str, Any] | None = None,
    asset: dict[str, Any] | None = None,
    action: dict[str, Any] | None = None,
    grant: Any = _DEFAULT,
    context: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The default input with each section's fields overridden (``grant=None``: no grant)."""
    if grant is _DEFAULT:
        grant_doc: Any = make_grant()
    elif isinstance(grant, dict):
        grant_doc = make_grant(**grant)
    else:
        grant_doc = grant
    return {
        "user": make_user(**(user or {})),
        "asset": make_asset(**(asset or {})),
        "action": make_action(**(action or {})),
        "grant": grant_doc,
        "context": make_context(**(context or {})),
    }


def make_contract(**fields: Any) -> dict[str, Any]:
    contract: dict[str, Any] = {
        "site": SITE,
        "asset": None,
        "valid_from": "2025-01-01T00:00:00Z",
        "valid_until": "2026-01-01T00:00:00Z",
        "reference": "SVC-1",
    }
    contract.update(fields)
    return contract


def make_data(
    *,
    sites: dict[str, Any] | None = None,
    assets: dict[str, Any] | None = None,
    contracts: list[dict[str, Any]] | None = None,
    vendor_orgs: dict[str, Any] | None = None,
    lockout: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The data document (``{"plant": {...}}``); sections given here replace the defaults."""
    default_sites = {
        SITE: {
            "timezone": "Europe/Berlin",
            "maintenance_windows": [{"days": ["tue"], "start": "22:00", "end": "02:00"}],
        },
        "Lakeside Works": {
            "timezone": "America/Chicago",
            "maintenance_windows": [{"days": ["sat", "sun"], "start": "06:00", "end": "18:00"}],
        },
    }
    default_assets = {
        ASSET: {
            "site": SITE,
            "zone": "press-line-control",
            "purdue_level": 1,
            "criticality": "critical",
            "owner_group": "ot-press-line",
            "protocols": ["modbus", "ssh"],
            "endpoints": make_endpoints(),
        },
        "hmi-press-3": {
            "site": SITE,
            "zone": "press-line-supervisory",
            "purdue_level": 2,
            "criticality": "high",
            "owner_group": "ot-press-line",
            "protocols": ["vnc"],
            "endpoints": [],
        },
    }
    orgs = (
        vendor_orgs
        if vendor_orgs is not None
        else {
            ORG: {"contracts": contracts if contracts is not None else [make_contract()]},
            "globex-controls": {
                "contracts": [make_contract(reference="SVC-9", site="Lakeside Works")]
            },
        }
    )
    return {
        "plant": {
            "sites": sites if sites is not None else default_sites,
            "assets": assets if assets is not None else default_assets,
            "vendor_orgs": orgs,
            "lockout": lockout if lockout is not None else {"vendors": False, "reason": ""},
        }
    }


def without(document: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A deep copy of ``document`` with the field at ``dotted`` (e.g. ``"user.sub"``) removed."""
    out = copy.deepcopy(document)
    *parents, last = dotted.split(".")
    node = out
    for part in parents:
        node = node[part]
    del node[last]
    return out


# ------------------------------------------------------------------------------------ corpus


@dataclass(frozen=True)
class Case:
    """One corpus entry: ``tag`` names the rule it exercises, ``allow`` the intended outcome."""

    tag: str
    allow: bool
    input: dict[str, Any]
    data: dict[str, Any]


ADMIN = {"sub": "admin-ada", "roles": ["admin"], "vendor_org": None, "groups": ["ot-admins"]}
APPROVER = {
    "sub": "owner-olga",
    "roles": ["approver"],
    "vendor_org": None,
    "groups": ["ot-press-line"],
    "amr": ["pwd"],
}


def _allowed_connection(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """A random allowed vendor connection (any kind, class, level 1-5, grant state)."""
    level = rng.randint(1, 5)
    crit = rng.choice(["low", "medium", "high", "critical"])
    op = rng.choice(OPERATION_CLASSES)
    grant = {
        "state": rng.choice(["approved", "active"]),
        "starts_at": at(NOW, minutes=-rng.randint(0, 600)),
        "ends_at": at(NOW, seconds=rng.choice([1, 59, 3600, 7200, 40000])),
    }
    contract = rng.choice(
        [
            make_contract(),
            make_contract(site=None, asset=ASSET, reference="SVC-7"),
            make_contract(asset=ASSET, reference="SVC-8"),
        ]
    )
    doc = make_input(
        asset={"purdue_level": level, "criticality": crit},
        action={"kind": rng.choice(CONNECTION_KINDS), "operation_class": op},
        grant=grant,
        user={"amr": rng.choice([["pwd", "mfa"], ["otp"], ["hwk", "pwd"]])},
    )
    return doc, make_data(contracts=[contract])


def _window_case(rng: random.Random, inside: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A maintenance-window-only grant, now inside or outside a (possibly overnight) window."""
    # (UTC instant, inside?) for window tue 22:00-02:00 and sat 08:00-12:00 Europe/Berlin,
    # including both sides of midnight and the DST change (2025-03-30, CET -> CEST).
    samples = [
        ("2025-03-04T21:30:00Z", True),  # Tue 22:30 CET
        ("2025-03-04T23:59:00Z", True),  # Wed 00:59 CET (after midnight, started Tue)
        ("2025-03-05T00:59:59Z", True),  # Wed 01:59:59
        ("2025-03-05T01:00:00Z", False),  # Wed 02:00 (end is exclusive)
        ("2025-03-04T20:59:59Z", False),  # Tue 21:59:59
        ("2025-03-05T21:30:00Z", False),  # Wed 22:30
        ("2025-03-03T23:30:00Z", False),  # Tue 00:30 (Monday has no window)
        ("2025-04-01T20:30:00Z", True),  # Tue 22:30 CEST
        ("2025-04-01T19:30:00Z", False),  # Tue 21:30 CEST (would be 20:30 in CET)
        ("2025-03-08T07:00:00Z", True),  # Sat 08:00 CET
        ("2025-03-08T11:00:00Z", False),  # Sat 12:00
    ]
    now, is_inside = rng.choice([s for s in samples if s[1] == inside])
    doc = make_input(
        context={"now": now},
        grant={
            "maintenance_window_only": True,
            "starts_at": at(now, days=-1),
            "ends_at": at(now, hours=3),
        },
    )
    windows = [
        {"days": ["tue"], "start": "22:00", "end": "02:00"},
        {"days": ["sat"], "start": "08:00", "end": "12:00"},
    ]
    sites = {SITE: {"timezone": "Europe/Berlin", "maintenance_windows": windows}}
    assert is_inside == inside
    return doc, make_data(sites=sites)


def _case(tag: str, rng: random.Random) -> Case:
    """Build one case for ``tag`` with randomised details that do not change the outcome."""
    kind = rng.choice(CONNECTION_KINDS)
    op = rng.choice(OPERATION_CLASSES)
    if tag == "allow_vendor_connection":
        return Case(tag, True, *_allowed_connection(rng))
    if tag == "allow_vendor_request":
        doc = make_input(
            action={"kind": "request", "operation_class": op},
            grant=None,
            asset={"purdue_level": rng.randint(1, 5)},
            user={"amr": rng.choice([["pwd"], ["mfa"]])},
            context={"agent_online": rng.choice([True, False])},
        )
        return Case(tag, True, doc, make_data())
    if tag == "allow_admin_standing":
        doc = make_input(
            user=ADMIN,
            asset={"purdue_level": rng.randint(3, 5)},
            action={"kind": kind, "operation_class": op},
            grant=None,
        )
        return Case(tag, True, doc, make_data(vendor_orgs={}))
    if tag == "allow_admin_with_grant":
        doc = make_input(
            user=ADMIN,
            asset={"purdue_level": rng.randint(1, 2)},
            action={"kind": kind, "operation_class": op},
            grant={"requester": "admin-ada"},
        )
        return Case(tag, True, doc, make_data(vendor_orgs={}))
    if tag == "allow_admin_request":
        doc = make_input(user=ADMIN, action={"kind": "request", "operation_class": op}, grant=None)
        return Case(tag, True, doc, make_data())
    if tag == "allow_approver":
        doc = make_input(
            user=APPROVER,
            action={"kind": "approve", "operation_class": op},
            grant={"state": "pending", "approvers": []},
            asset={"purdue_level": rng.randint(1, 5)},
        )
        return Case(tag, True, doc, make_data())
    if tag == "allow_admin_approve":
        doc = make_input(
            user=ADMIN | {"groups": []},
            action={"kind": "approve"},
            grant={"state": "pending", "approvers": ["owner-olga"]},
        )
        return Case(tag, True, doc, make_data())
    if tag == "allow_window":
        return Case(tag, True, *_window_case(rng, inside=True))
    if tag == "deny_window":
        return Case(tag, False, *_window_case(rng, inside=False))
    if tag == "deny_no_role":
        doc = make_input(
            user={"roles": rng.choice([[], ["approver"], ["security"]])},
            action={"kind": rng.choice([*CONNECTION_KINDS, "request"])},
        )
        return Case(tag, False, doc, make_data())
    if tag == "deny_approve_role":
        doc = make_input(
            user=APPROVER | {"roles": rng.choice([["vendor"], ["security"], []])},
            action={"kind": "approve"},
            grant={"state": "pending"},
        )
        return Case(tag, False, doc, make_data())
    if tag == "deny_not_owner":
        doc = make_input(
            user=APPROVER | {"groups": ["ot-packaging"]},
            action={"kind": "approve"},
            grant={"state": "pending", "approvers": []},
        )
        return Case(tag, False, doc, make_data())
    if tag == "deny_no_vendor_org":
        doc = make_input(user={"vendor_org": None}, action={"kind": rng.choice([kind, "request"])})
        return Case(tag, False, doc, make_data())
    if tag == "deny_no_contract":
        contracts = rng.choice(
            [
                [],
                [make_contract(site="Lakeside Works")],
                [make_contract(site=None, asset="hmi-press-3")],
                [make_contract(site=None, asset=None)],
            ]
        )
        doc = make_input(action={"kind": rng.choice([kind, "request"])})
        return Case(tag, False, doc, make_data(contracts=contracts))
    if tag == "deny_other_org_contract":
        doc = make_input(user={"vendor_org": "globex-controls"})
        return Case(tag, False, doc, make_data())
    if tag == "deny_contract_expired":
        contract = rng.choice(
            [
                make_contract(valid_until=at(NOW, seconds=-1)),
                make_contract(valid_until=NOW),
                make_contract(valid_from=at(NOW, seconds=1)),
            ]
        )
        doc = make_input(action={"kind": rng.choice([kind, "request"])})
        return Case(tag, False, doc, make_data(contracts=[contract]))
    if tag == "deny_level0":
        who = rng.choice([{}, ADMIN, APPROVER])
        act = rng.choice([kind, "request", "approve"])
        doc = make_input(
            user=who,
            asset={"purdue_level": 0},
            action={"kind": act},
            grant={"state": "pending"} if act == "approve" else _DEFAULT,
        )
        return Case(tag, False, doc, make_data())
    if tag == "deny_no_mfa":
        if rng.random() < 0.5:
            doc = make_input(
                user={"amr": rng.choice([[], ["pwd"], ["MFA"]])},
                asset={"purdue_level": rng.randint(1, 2)},
                action={"kind": kind},
            )
        else:
            doc = make_input(
                user={"amr": ["pwd"]},
                asset={"purdue_level": rng.randint(3, 5)},
                action={"kind": kind, "operation_class": rng.choice(["program", "firmware"])},
            )
        return Case(tag, False, doc, make_data())
    if tag == "deny_no_grant":
        who = rng.choice([{}, ADMIN])
        level = rng.randint(1, 5) if not who else rng.randint(1, 2)
        doc = make_input(user=who, asset={"purdue_level": level}, action={"kind": kind}, grant=None)
        return Case(tag, False, doc, make_data())
    if tag == "deny_grant_state":
        state = rng.choice(["pending", "expired", "revoked", "denied", "cancelled"])
        return Case(tag, False, make_input(grant={"state": state}), make_data())
    if tag == "deny_grant_time":
        grant = rng.choice(
            [
                {"starts_at": at(NOW, seconds=1)},
                {"ends_at": NOW},
                {"ends_at": at(NOW, hours=-1), "starts_at": at(NOW, hours=-3)},
            ]
        )
        return Case(tag, False, make_input(grant=grant, action={"kind": kind}), make_data())
    if tag == "deny_grant_requester":
        doc = make_input(grant={"requester": rng.choice(["vendor-bob", "VENDOR-ALICE", ""])})
        return Case(tag, False, doc, make_data())
    if tag == "deny_lockout":
        act = rng.choice([kind, "request"])
        lockout: dict[str, Any] = rng.choice(
            [
                {"vendors": True, "reason": "incident INC-7"},
                {"vendors": True},
                {"reason": "flag missing"},
            ]
        )
        doc = make_input(action={"kind": act}, grant=None if act == "request" else _DEFAULT)
        return Case(tag, False, doc, make_data(lockout=lockout))
    if tag == "allow_lockout_spares_admin":
        doc = make_input(user=ADMIN, asset={"purdue_level": 3}, grant=None)
        return Case(tag, True, doc, make_data(lockout={"vendors": True, "reason": "incident"}))
    if tag == "deny_own_approval":
        who = rng.choice([APPROVER, ADMIN])
        doc = make_input(
            user=who,
            action={"kind": "approve"},
            grant={"state": "pending", "requester": who["sub"], "approvers": []},
        )
        return Case(tag, False, doc, make_data())
    if tag == "deny_approve_state":
        doc = make_input(
            user=APPROVER,
            action={"kind": "approve"},
            grant={"state": rng.choice(["approved", "active", "revoked"])},
        )
        return Case(tag, False, doc, make_data())
    if tag == "deny_already_approved":
        doc = make_input(
            user=APPROVER,
            action={"kind": "approve"},
            grant={"state": "pending", "approvers": ["owner-olga"]},
        )
        return Case(tag, False, doc, make_data())
    if tag == "deny_approve_without_grant":
        doc = make_input(user=APPROVER, action={"kind": "approve"}, grant=None)
        return Case(tag, False, doc, make_data())
    if tag == "deny_agent_offline":
        doc = make_input(action={"kind": kind}, context={"agent_online": False})
        return Case(tag, False, doc, make_data())
    if tag == "deny_malformed":
        return Case(tag, False, *_malformed(rng))
    raise ValueError(f"unknown corpus tag {tag!r}")


MALFORMED_FIELDS = (
    "user",
    "asset",
    "action",
    "context",
    "user.sub",
    "user.roles",
    "user.groups",
    "user.amr",
    "asset.name",
    "asset.site",
    "asset.purdue_level",
    "asset.criticality",
    "asset.owner_group",
    "action.kind",
    "action.operation_class",
    "context.now",
    "context.agent_online",
    "grant.id",
    "grant.requester",
    "grant.approvers",
    "grant.starts_at",
    "grant.ends_at",
    "grant.state",
    "grant.maintenance_window_only",
)
BAD_VALUES: dict[str, list[Any]] = {
    "user.sub": ["", 7, None],
    "user.roles": ["vendor", [1], None],
    "user.vendor_org": [5, ["acme-automation"]],
    "asset.purdue_level": [-1, 6, 1.5, "1", True, None],
    "asset.criticality": ["severe", None],
    "action.kind": ["telnet", "SSH", None],
    "action.operation_class": ["write", None],
    "context.now": [
        "2025-03-04 21:30:00",
        "2025-02-30T10:00:00Z",
        "2025-03-04T25:00:00Z",
        "yesterday",
        1741123800,
        None,
    ],
    "context.agent_online": ["yes", 1, None],
    "grant.starts_at": ["2025-13-01T00:00:00Z", "2024-02-30T00:00:00Z"],
    "grant.ends_at": ["soon", "2025-03-04T21:30:00"],
    "grant.state": ["APPROVED", None],
    "grant.maintenance_window_only": ["false", None],
    "grant": ["g-1", [1]],
}


def _malformed(rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """A valid allowed input with one field removed or replaced by a wrong value."""
    doc, data = _allowed_connection(rng)
    if rng.random() < 0.5:
        return without(doc, rng.choice(MALFORMED_FIELDS)), data
    path = rng.choice(sorted(BAD_VALUES))
    *parents, last = path.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[last] = rng.choice(BAD_VALUES[path])
    return doc, data


TAGS = (
    "allow_vendor_connection",
    "allow_vendor_request",
    "allow_admin_standing",
    "allow_admin_with_grant",
    "allow_admin_request",
    "allow_approver",
    "allow_admin_approve",
    "allow_window",
    "allow_lockout_spares_admin",
    "deny_window",
    "deny_no_role",
    "deny_approve_role",
    "deny_not_owner",
    "deny_no_vendor_org",
    "deny_no_contract",
    "deny_other_org_contract",
    "deny_contract_expired",
    "deny_level0",
    "deny_no_mfa",
    "deny_no_grant",
    "deny_grant_state",
    "deny_grant_time",
    "deny_grant_requester",
    "deny_lockout",
    "deny_own_approval",
    "deny_approve_state",
    "deny_already_approved",
    "deny_approve_without_grant",
    "deny_agent_offline",
    "deny_malformed",
)


def generate_cases(n: int, seed: int) -> list[Case]:
    """``n`` tagged cases: every tag in turn (so each appears n // len(TAGS) times or more)."""
    rng = random.Random(seed)
    return [_case(TAGS[i % len(TAGS)], rng) for i in range(n)]


def generate_corpus(n: int, seed: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``n`` (input, data) pairs covering every default rule; the same seed gives the same list."""
    return [(case.input, case.data) for case in generate_cases(n, seed)]
