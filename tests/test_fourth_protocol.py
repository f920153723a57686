"""The acceptance claim "adding a fourth protocol touches one new module, one registry line and
its Rego/obligations", shown for the pages without touching ``broker/``: a toy DNP3 plug-in
(this module stands in for ``sessions/ot/dnp3.py``) is registered in-process, as the registry
line would, and from then on its obligations block reads as its own words in the one
obligations renderer and the vendor's grant list, a ``dnp3`` endpoint counts as inspected, its
settings are validated by its validator (through the plant page's form on a real broker too)
and described by its describer on the plant page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpx2
import pytest

from broker.dev.demo import DEMO_PLANT_PATH
from broker.http.obligations_view import obligation_rows, obligations_text
from broker.web.plant_pages import settings_summary
from broker.web.vendor_scope import GrantView, allowances
from policies.decision import Obligations
from sessions.clock import Clock, SystemClock
from sessions.endpoints import endpoint_document, validate_settings
from sessions.errors import ValidationError
from sessions.models import AssetEndpoint, Grant
from sessions.ot import registry
from sessions.ot.base import Inspector, ProtocolPlugin, shown_block
from sessions.ot.pacing import TokenBucket
from sessions.ot.settings import fail, integer, unknown_keys
from sessions.ot.wording import compact_json, numbers, operation_names, refused
from sessions.plant import load_yaml
from tests.harness.broker import RunningBroker, audit_events, same_origin_api, web_login

OPERATIONS = ("read", "select", "operate", "direct_operate", "cold_restart")


def _inspector(
    obligations: Obligations | None, clock: Clock, bucket: TokenBucket | None
) -> Inspector:
    raise AssertionError("these tests never relay DNP3 traffic")


def validate_dnp3_settings(settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{"points": [index, ...]}``: the binary outputs tune may operate."""
    unknown_keys(settings, {"points"}, where, "dnp3 setting(s)")
    points = settings.get("points", [])
    if not isinstance(points, list):
        raise fail(f"{where}.points", "must be a list of point indexes 0-65535")
    checked = {integer(p, f"{where}.points[]", 0, 65535) for p in points}
    return {"points": sorted(checked)} if checked else {}


def describe_dnp3_obligations(obligations: Mapping[str, Any]) -> str | None:
    block = shown_block(obligations, "dnp3")
    if block is None:
        return None
    allow = block.get("allow") if isinstance(block, Mapping) else None
    if not isinstance(allow, list) or not set(allow) <= set(OPERATIONS):
        return refused(f"obligations.protocols.dnp3 is not {{allow: [...]}}: {compact_json(block)}")
    return f"operations {operation_names(allow)}" if allow else "no operations allowed"


def describe_dnp3_settings(settings: Mapping[str, Any]) -> str:
    points = settings.get("points")
    return f"tune may operate points {numbers(points)}" if points else "no points to operate"


DNP3 = ProtocolPlugin(
    "dnp3", 20000, _inspector, validate_dnp3_settings, "DNP3",
    describe_dnp3_obligations, describe_dnp3_settings,
)  # fmt: skip
BLOCK = {"allow": ["read", "direct_operate"]}


@pytest.fixture
def dnp3(monkeypatch: pytest.MonkeyPatch) -> ProtocolPlugin:
    """The registry line ``"dnp3": dnp3.PLUGIN``, in-process for this test only."""
    monkeypatch.setattr(registry, "PLUGINS", {**registry.PLUGINS, "dnp3": DNP3})
    return DNP3


def _endpoint(settings: dict[str, Any] | None = None) -> AssetEndpoint:
    return AssetEndpoint(
        asset_id="a",
        name="rtu",
        host="10.0.1.9",
        port=20000,
        protocol="dnp3",
        settings=settings or {},
    )


def test_before_the_registry_line_the_block_is_compact_json_and_dnp3_plain_tcp() -> None:
    o = Obligations(protocols={"dnp3": BLOCK}).as_dict()
    rows = dict(obligation_rows(o, ["dnp3"]))
    assert rows["dnp3"] == '{"allow": ["read", "direct_operate"]}'  # never a Python repr
    assert endpoint_document(_endpoint())["inspected"] is False
    with pytest.raises(ValidationError, match="dnp3 endpoints take no settings"):
        validate_settings("dnp3", {"points": [1]})
    assert settings_summary("dnp3", {"points": [1]}) == ""


def test_its_block_reads_as_its_words_in_the_one_renderer(dnp3: ProtocolPlugin) -> None:
    o = Obligations(protocols={"dnp3": BLOCK}, rate_limit_rps=5.0).as_dict()
    rows = dict(obligation_rows(o, ["dnp3"]))
    assert rows["DNP3"] == "operations read, direct operate"
    assert "dnp3" not in rows and "Modbus" not in rows
    assert rows["Rate limit"] == "5 requests/s"  # the shared bucket applies to it too
    assert "DNP3: operations read, direct operate" in obligations_text(o)  # what-if: all rows
    assert "DNP3" not in dict(obligation_rows(o, ["ssh"]))  # not reached: not promised
    broken = dict(obligation_rows({"protocols": {"dnp3": {"allow": "all"}}}, ["dnp3"]))
    assert broken["DNP3"] == (
        "malformed, so every connection is refused "
        '(obligations.protocols.dnp3 is not {allow: [...]}: {"allow": "all"})'
    )


def test_the_vendors_grant_list_says_what_it_allows(dnp3: ProtocolPlugin) -> None:
    now = SystemClock().now()
    grant = Grant(
        id="0123456789abcdef",
        operation_class="tune",
        starts_at=now,
        ends_at=now + timedelta(hours=2),
        obligations=Obligations(protocols={"dnp3": BLOCK}).as_dict(),
    )
    view = GrantView(grant=grant, asset="rtu-lab", ports=[20000], login=None)
    lines = allowances(view, [_endpoint({"points": [3]})])
    assert lines[0] == "rtu (dnp3 10.0.1.9:20000): operations read, direct operate"


def test_a_dnp3_endpoint_counts_as_inspected(dnp3: ProtocolPlugin) -> None:
    document = endpoint_document(_endpoint())
    assert document["inspected"] is True and document["protocol"] == "dnp3"
    assert registry.plugin_for("dnp3") is dnp3


def test_its_settings_are_validated_and_described_by_the_plugin(dnp3: ProtocolPlugin) -> None:
    assert validate_settings("dnp3", {"points": [7, 3, 3]}) == {"points": [3, 7]}
    with pytest.raises(ValidationError) as bad:
        validate_settings("dnp3", {"points": [70000]})
    assert str(bad.value) == "settings.points[]: must be an integer 0-65535, got 70000"
    with pytest.raises(ValidationError, match="unknown dnp3 setting"):
        validate_settings("dnp3", {"coils": [1]})
    assert settings_summary("dnp3", {"points": [3, 7]}) == "DNP3: tune may operate points 3, 7"


def test_the_plant_page_validates_and_describes_a_dnp3_endpoint(
    dnp3: ProtocolPlugin, broker: RunningBroker, http: httpx2.Client
) -> None:
    web_login(http, broker.url, "adam", "adam-demo-pw")
    same_origin_api(http, broker.url)
    demo = load_yaml(DEMO_PLANT_PATH.read_text(encoding="utf-8"))[0]
    assert http.post(f"{broker.url}/api/plant/apply", json={"document": demo}).is_success
    page = http.get(f"{broker.url}/admin/plant").text
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page)
    assert csrf, "the page carries the session's CSRF token"
    form = {
        "csrf": csrf[1],
        "asset": "plc-press-3",
        "name": "rtu",
        "protocol": "dnp3",
        "host": "127.0.0.1",
        "port": "20000",
    }
    bad = http.post(
        f"{broker.url}/admin/plant/endpoint", data={**form, "settings": "{points: [-1]}"}
    )
    assert bad.status_code == 400
    assert re.search(
        r"endpoints\[\d+\]\.settings\.points\[\]: must be an integer 0-65535, got -1", bad.text
    )
    assert "DNP3:" not in bad.text and audit_events(broker, "plant.refused")
    ok = http.post(
        f"{broker.url}/admin/plant/endpoint", data={**form, "settings": "{points: [4, 2]}"}
    )
    assert ok.status_code == 303, ok.text
    shown = http.get(f"{broker.url}/admin/plant").text
    assert '<span class="summary">DNP3: tune may operate points 2, 4</span>' in shown
