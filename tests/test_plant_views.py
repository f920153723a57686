"""Vendor and approver views of the plant model, through a real broker and the real IdP.

adam applies a plant whose only contracts for ACME cover hist-01 (read_only, tune) and
plc-press-3; alice's form offers exactly those (never level 0) with their declared endpoints
and logins; a request for an uncovered asset or an undeclared port is refused with the
service's message; olga's queue shows ACME and the covering contract; after olga approves,
alice's grant row says how to connect (``conduit ssh``/``ssh`` with the login) and what the
grant allows; ``/admin/identity`` shows the role and vendor-org claim mapping.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, expect

from broker.dev.demo import DEMO_PLANT_PATH
from sessions.plant import load_yaml
from tests.harness.broker import RunningBroker, form_values, same_origin_api, web_login
from tests.test_access_browser import _sign_in

CONTRACTS = [
    {
        "reference": "SVC-HIST-7",
        "asset": "hist-01",
        "valid_from": "-1d",
        "valid_until": "+30d",
        "operation_classes": ["read_only", "tune"],
    },
    {"reference": "SVC-PLC-9", "asset": "plc-press-3", "valid_from": "-1d", "valid_until": "+30d"},
]


def _plant() -> Any:
    data = copy.deepcopy(load_yaml(DEMO_PLANT_PATH.read_text(encoding="utf-8"))[0])
    for asset in data["assets"]:  # olga (ot-approvers) approves for the PLC too
        asset["owner_group"] = "ot-approvers"
    data["vendor_orgs"][0]["contracts"] = CONTRACTS
    data["vendor_orgs"][0]["idp_values"] = ["ACME Automation GmbH"]
    return data


@contextmanager
def _signed_in(broker: RunningBroker, name: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(timeout=10.0, follow_redirects=False) as client:
        answer = web_login(client, broker.url, name, f"{name}-demo-pw")
        assert answer.status_code == 303, answer.text
        yield client


def _post(client: httpx2.Client, broker: RunningBroker, **fields: Any) -> httpx2.Response:
    page = client.get(f"{broker.url}/vendor")
    start = (broker.services.clock.now() + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M")
    body = {
        "csrf": form_values(page.text)["csrf"],
        "operation_class": "read_only",
        "starts_at": start,
        "duration": "60",
        "reason": "historian health check",
        **fields,
    }
    return client.post(f"{broker.url}/vendor/requests", data=body)


def _error(html: str) -> str:
    found = re.search(r'<p id="access-error-message">(.*?)</p>', html, re.S)
    assert found, html
    return found[1].replace("&#39;", "'")


def _apply(broker: RunningBroker) -> None:
    with _signed_in(broker, "adam") as adam:
        same_origin_api(adam, broker.url)
        applied = adam.post(f"{broker.url}/api/plant/apply", json={"document": _plant()})
        assert applied.is_success, applied.text


def _approve_all(broker: RunningBroker) -> None:
    with _signed_in(broker, "olga") as olga:
        queue = olga.get(f"{broker.url}/approvals").text
        for request_id in re.findall(r'id="pending-([0-9a-f-]+)"', queue):
            done = olga.post(
                f"{broker.url}/approvals/{request_id}/approve",
                data={"csrf": form_values(queue)["csrf"]},
            )
            assert done.status_code == 303, done.text


def test_vendor_form_queue_grant_page_and_identity_mapping(broker: RunningBroker) -> None:
    _apply(broker)

    with _signed_in(broker, "alice") as alice:
        form = alice.get(f"{broker.url}/vendor").text
        options = re.findall(r'<option value="([^"]+)"[^>]*>([^<]+)</option>', form)
        assets = [(v, label) for v, label in options if "level" in label]
        assert assets == [
            ("hist-01", "hist-01 (enterprise-dmz, level 3)"),
            ("plc-press-3", "plc-press-3 (press-line-control, level 1)"),
        ]
        hist = form.split('id="scope-hist-01"')[1].split("</fieldset>")[0]
        assert 'value="22"' in hist and "ssh: ssh 127.0.0.1:22" in hist
        classes = re.findall(r'<option value="(\w+)"', hist.split('name="operation_class"')[1])
        assert classes[:2] == ["read_only", "tune"] and "program" not in hist.split("SSH login")[0]
        assert '<option value="maint" >maint (read_only, tune)</option>' in hist
        assert "eng" not in hist  # program/firmware logins: the contract does not allow them
        assert "Contract: SVC-HIST-7" in hist
        plc = form.split('id="scope-plc-press-3"')[1].split("</fieldset>")[0]
        assert "hidden disabled" in form.split('id="scope-plc-press-3"')[1][:80]
        assert "modbus: modbus 127.0.0.1:502" in plc and "SSH login" not in plc

        refused = _post(alice, broker, asset="hist-01", ports="2222")
        assert refused.status_code == 400
        assert _error(refused.text) == (
            "port(s) 2222 are not declared endpoints of hist-01 (declared: ssh 127.0.0.1:22 (ssh))"
        )
        uncovered = _post(alice, broker, asset="scada-01", ports="22", login="maint")
        assert uncovered.status_code == 403, uncovered.text
        assert "the access policy refuses this request" in _error(uncovered.text)

        filed = _post(alice, broker, asset="hist-01", ports="22", login="maint", ticket="CHG-7")
        assert filed.status_code == 303, filed.text

    with _signed_in(broker, "olga") as olga:
        queue = olga.get(f"{broker.url}/approvals").text
        [request_id] = re.findall(r'id="pending-([0-9a-f-]+)"', queue)
        vendor = queue.split(f'id="vendor-{request_id}"')[1].split("</div>")[0]
        assert "ACME Automation (acme-automation)" in vendor
        assert "contract SVC-HIST-7 (valid " in vendor and "classes: read_only, tune)" in vendor
        csrf = form_values(queue)["csrf"]
        done = olga.post(f"{broker.url}/approvals/{request_id}/approve", data={"csrf": csrf})
        assert done.status_code == 303, done.text

    with _signed_in(broker, "alice") as alice:
        page = alice.get(f"{broker.url}/vendor").text
        [grant_id] = re.findall(r'id="grant-([0-9a-f-]+)"', page)
        row = page.split(f'id="grant-{grant_id}"')[1].split("</tr>")[0]
        prefix = grant_id[:8]
        port = broker.services.front.port if broker.services.front else None
        assert f"<code>conduit ssh maint@hist-01 --grant {prefix}</code>" in row
        assert f"<code>ssh -p {port} maint@hist-01+{prefix}@127.0.0.1</code>" in row
        assert "ssh (ssh 127.0.0.1:22): SSH as maint" in row
        assert re.search(r"<li>until \d{4}-\d\d-\d\d \d\d:\d\d UTC</li>", row)
        assert "True" not in row and "False" not in row

    with _signed_in(broker, "adam") as adam:  # admins: every asset above level 0
        offered = re.findall(r'<option value="([^"]+)"', adam.get(f"{broker.url}/vendor").text)
        assert {"hist-01", "scada-01", "hmi-press-3", "plc-press-3"} <= set(offered)
        assert "drive-press-3" not in offered  # field devices (level 0) are never offered
        mapping = adam.get(f"{broker.url}/admin/identity")
        assert mapping.status_code == 200, mapping.text
        roles = broker.services.settings.roles
        vendor_row = mapping.text.split('id="role-vendor"')[1].split("</tr>")[0]
        assert all(f"<code>{g}</code>" in vendor_row for g in roles.vendor)
        assert "CONDUIT_ROLES__VENDOR" in vendor_row
        claim = broker.services.settings.oidc.vendor_org_claim
        assert f"from the <code>{claim}</code> claim" in mapping.text
        org = mapping.text.split('id="org-acme-automation"')[1].split("</tr>")[0]
        assert "<code>acme-automation</code>, <code>ACME Automation GmbH</code>" in org
        assert (
            "conduit plant apply" in mapping.text and "<form" not in mapping.text.split("<main")[-1]
        )
    with _signed_in(broker, "alice") as alice:
        assert alice.get(f"{broker.url}/admin/identity").status_code == 403


def test_a_modbus_grant_says_forward_and_its_write_ranges(broker: RunningBroker) -> None:
    _apply(broker)
    with _signed_in(broker, "alice") as alice:
        filed = _post(alice, broker, asset="plc-press-3", operation_class="tune", ports="502")
        assert filed.status_code == 303, filed.text
    _approve_all(broker)
    with _signed_in(broker, "alice") as alice:
        page = alice.get(f"{broker.url}/vendor").text
        [grant_id] = re.findall(r'id="grant-([0-9a-f-]+)"', page)
        row = page.split(f'id="grant-{grant_id}"')[1].split("</tr>")[0]
        forward = f"conduit forward plc-press-3 502 --grant {grant_id[:8]} --local-port 1502"
        assert f"<code>{forward}</code>" in row
        assert "modbus (modbus 127.0.0.1:502): function codes 1, 2, 3, 4" in row
        assert (
            "writes to coils 0\u201315 (unit 1); holding registers 0\u201399 (unit 1)</li>" in row
        )


@pytest.mark.browser
def test_the_form_shows_the_selected_assets_endpoints_in_chromium(
    chromium: Browser, broker: RunningBroker
) -> None:
    """The CSP-safe script swaps the fieldset: only the selected asset's endpoints are sent."""
    _apply(broker)
    page = _sign_in(chromium, broker, "alice", "alice-demo-pw")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(broker.url + "/vendor")
    expect(page.locator("#scope-hist-01")).to_be_visible()
    expect(page.locator("#scope-plc-press-3")).to_be_hidden()
    page.select_option("#asset", "plc-press-3")
    expect(page.locator("#scope-plc-press-3")).to_be_visible()
    expect(page.locator("#scope-hist-01")).to_be_hidden()
    page.select_option("#operation_class", "tune")
    page.check("#scope-plc-press-3 input[name=ports][value='502']")
    page.fill("#reason", "tune the press PLC")
    page.click("#request-submit")
    expect(page.locator("#access-message")).to_contain_text("request for tune on plc-press-3")
    expect(page.locator("#my-requests ul.reaches")).to_have_text("modbus 127.0.0.1:502")
    assert [e for e in errors if "script" in e] == [], errors  # no script refused by the CSP
    page.context.close()
