"""Malformed requests get a clear 4xx answer, no internals, and an audit event where it matters."""

from __future__ import annotations

import httpx2
import sqlalchemy as sa

from tests.harness.broker import RunningBroker, audit_events, web_login


def test_token_endpoint_rejects_malformed_bodies(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    url = f"{broker.url}/api/cli/token"
    bad_json = http.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"] == "bad_request"
    array = http.post(url, json=[1, 2])
    assert array.status_code == 400 and "JSON object" in array.json()["message"]
    grant = http.post(
        url, json={"grant_type": "password", "username": "a", "password": "hunter2-x"}
    )
    assert grant.json()["error"] == "unsupported_grant_type"
    no_code = http.post(url, json={"grant_type": "authorization_code"})
    assert no_code.json()["error"] == "invalid_grant"
    refused = [e for e in audit_events(broker, "cli.token") if e["outcome"] == "rejected"]
    assert len(refused) == 2
    assert all("hunter2-x" not in str(e["details"]) for e in refused)


def test_callback_without_code_is_rejected_and_audited(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    resp = http.get(f"{broker.url}/auth/callback?state=only")
    assert resp.status_code == 400 and ">callback_malformed<" in resp.text
    assert audit_events(broker, "auth.login")[0]["details"]["code"] == "callback_malformed"


def test_garbage_bearer_and_cookie_are_unauthenticated(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    for headers in (
        {"Authorization": b"Bearer cdt_\xe9junk"},
        {"Authorization": "Basic Zm9vOmJhcg=="},
        {"Cookie": "conduit_session=" + "A" * 5000},
    ):
        resp = http.get(f"{broker.url}/api/whoami", headers=headers)
        assert resp.status_code == 401 and resp.json()["error"] == "not_authenticated"


def test_cli_authorize_needs_pkce_and_state(broker: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, broker.url, "alice", "alice-demo-pw")
    base = {"redirect_uri": "http://127.0.0.1:9/cb", "state": "s", "code_challenge": "x" * 43}
    for drop in ("code_challenge", "state"):
        params = {k: v for k, v in base.items() if k != drop}
        resp = http.get(f"{broker.url}/cli/authorize", params=params)
        assert resp.status_code == 400 and "Traceback" not in resp.text
    plain = http.get(
        f"{broker.url}/cli/authorize", params={**base, "code_challenge_method": "plain"}
    )
    assert plain.status_code == 400


def test_unknown_paths_and_methods(broker: RunningBroker, http: httpx2.Client) -> None:
    page = http.get(f"{broker.url}/no/such/page", headers={"accept": "text/html"})
    assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
    assert 'id="error-code">not_found<' in page.text and "<title>Page not found" in page.text
    assert 'class="topbar"' in page.text  # the layout, not a bare "Not Found"
    wrong = http.delete(f"{broker.url}/login")
    assert wrong.status_code == 405 and set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert 'id="error-code">method_not_allowed<' in wrong.text
    for api in (http.get(f"{broker.url}/api/no/such"), http.delete(f"{broker.url}/api/whoami")):
        assert api.status_code in (404, 405)  # /api/ paths keep JSON errors
        assert api.json()["error"] in ("not_found", "method_not_allowed")
    assert http.get(f"{broker.url}/x", headers={"accept": "application/json"}).json() == {
        "error": "not_found",
        "message": "there is no page at this address",
    }
    security = http.get(f"{broker.url}/")
    assert security.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in security.headers["content-security-policy"]
    assert security.headers["referrer-policy"] == "no-referrer"


def test_an_internal_error_is_a_page_in_the_layout_with_the_security_headers(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    """The session store fails under a signed-in user: a 500 page (or JSON on /api/) with a
    reference, no internals, and the same security headers as every other answer."""
    assert web_login(http, broker.url, "alice", "alice-demo-pw").status_code == 303
    with broker.services.engine.begin() as db:
        db.execute(sa.text("DROP TABLE web_sessions"))
    page = http.get(f"{broker.url}/whoami", headers={"accept": "text/html"})
    assert page.status_code == 500 and 'id="error-code">internal_error<' in page.text
    assert "<title>Something went wrong" in page.text and 'id="signin"' in page.text
    assert "web_sessions" not in page.text and "Traceback" not in page.text
    assert "style-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    # uvicorn closes the connection after a 500: the next call comes on a new one
    with httpx2.Client(timeout=30.0, cookies=http.cookies) as again:
        api = again.get(f"{broker.url}/api/whoami")
    assert api.status_code == 500 and api.json()["error"] == "internal_error"
    assert "reference" in api.json()["message"] and "web_sessions" not in api.text
