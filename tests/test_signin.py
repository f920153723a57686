"""OIDC web sign-in against the real dev IdP: the happy path and every rejection."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest

from sessions.testing import ManualClock
from tests.harness.broker import RunningBroker, audit_events, begin_login, form_values, web_login
from tests.harness.idp import RunningIdP, idp_login, idp_logout
from tests.harness.tamper import TamperTransport, claims_of, resign, unsigned
from tests.harness.wait import TIMEOUT_S


def _rejections(broker: RunningBroker) -> list[dict[str, Any]]:
    return [e for e in audit_events(broker, "auth.login") if e["outcome"] == "rejected"]


def _assert_rejected(broker: RunningBroker, resp: httpx2.Response, code: str) -> None:
    assert resp.status_code == 400, resp.text
    assert f">{code}<" in resp.text
    assert "Traceback" not in resp.text
    assert "conduit_session" not in resp.headers.get("set-cookie", "")
    codes = [e["details"]["code"] for e in _rejections(broker)]
    assert codes == [code]


def test_vendor_signs_in_and_sees_name_and_role(broker: RunningBroker, http: httpx2.Client) -> None:
    resp = web_login(http, broker.url, "alice", "alice-demo-pw", next_path="/whoami")
    assert resp.status_code == 303
    assert resp.headers["location"] == "/whoami"
    cookie = resp.headers["set-cookie"]
    assert "conduit_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    page = http.get(f"{broker.url}/whoami")
    assert page.status_code == 200
    assert "Alice Vendor" in page.text and ">vendor<" in page.text
    me = http.get(f"{broker.url}/api/whoami").json()
    assert me["roles"] == ["vendor"] and me["email"] == "alice@acme-automation.example"
    login = [e for e in audit_events(broker, "auth.login") if e["outcome"] == "ok"]
    assert len(login) == 1 and login[0]["details"]["roles"] == ["vendor"]
    assert broker.services.audit.verify().ok


def test_wrong_password_is_refused_by_the_idp(broker: RunningBroker, http: httpx2.Client) -> None:
    resp = web_login(http, broker.url, "alice", "not-her-password")
    assert resp.status_code == 200 and "Invalid username or password" in resp.text
    assert "conduit_session" not in http.cookies
    assert http.get(f"{broker.url}/api/whoami").status_code == 401


def test_sign_out_ends_the_session(broker: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, broker.url, "alice", "alice-demo-pw")
    page = http.get(f"{broker.url}/whoami")
    csrf = form_values(page.text)["csrf"]
    out = http.post(f"{broker.url}/logout", data={"csrf": csrf})
    assert out.status_code == 303
    end_session = out.headers["location"]
    assert end_session.startswith(broker.services.settings.oidc.issuer)
    back = idp_logout(http, end_session)
    assert back.headers["location"].startswith(broker.url)
    assert http.get(f"{broker.url}/api/whoami").status_code == 401
    assert http.get(f"{broker.url}/whoami").headers["location"].startswith("/signin")
    # The IdP session ended too: a new sign-in shows the password form again.
    form = http.get(begin_login(http, broker.url), follow_redirects=True)
    assert 'name="password"' in form.text
    assert [e["outcome"] for e in audit_events(broker, "auth.logout")] == ["ok"]


def test_logout_without_csrf_token_is_refused(broker: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, broker.url, "alice", "alice-demo-pw")
    assert http.post(f"{broker.url}/logout", data={"csrf": "forged"}).status_code == 400
    assert http.get(f"{broker.url}/api/whoami").status_code == 200


@pytest.fixture
def tamper() -> TamperTransport:
    return TamperTransport()


@pytest.fixture
def tampered(make_broker: Callable[..., RunningBroker], tamper: TamperTransport) -> RunningBroker:
    return make_broker(oidc_transport=tamper)


def test_tampered_signature_is_rejected(
    tampered: RunningBroker, tamper: TamperTransport, http: httpx2.Client
) -> None:
    def flip(token: str) -> str:
        head, body, sig = token.split(".")
        return f"{head}.{body}.{sig[:10]}{'A' if sig[10] != 'A' else 'B'}{sig[11:]}"

    tamper.id_token_hook = flip
    _assert_rejected(
        tampered, web_login(http, tampered.url, "alice", "alice-demo-pw"), "id_token_bad_signature"
    )


def test_alg_none_token_is_rejected(
    tampered: RunningBroker, tamper: TamperTransport, http: httpx2.Client
) -> None:
    tamper.id_token_hook = lambda token: unsigned(claims_of(token))
    _assert_rejected(
        tampered, web_login(http, tampered.url, "alice", "alice-demo-pw"), "id_token_bad_alg"
    )


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"iss": "http://127.0.0.1:1/evil"}, "id_token_bad_issuer"),
        ({"aud": "some-other-client"}, "id_token_bad_audience"),
        ({"nonce": "nonce-of-another-sign-in"}, "id_token_bad_nonce"),
        ({"exp": 1_000_000_000, "iat": 999_999_000}, "id_token_expired"),
    ],
    ids=["wrong-issuer", "wrong-audience", "wrong-nonce", "expired"],
)
def test_validly_signed_but_wrong_claims_are_rejected(
    tampered: RunningBroker,
    tamper: TamperTransport,
    idp: RunningIdP,
    http: httpx2.Client,
    change: dict[str, Any],
    code: str,
) -> None:
    tamper.id_token_hook = lambda token: resign(idp.private_jwks, {**claims_of(token), **change})
    _assert_rejected(tampered, web_login(http, tampered.url, "alice", "alice-demo-pw"), code)


def test_token_expired_by_the_brokers_clock_is_rejected(
    make_broker: Callable[..., RunningBroker], http: httpx2.Client
) -> None:
    clock = ManualClock(datetime.now(UTC) + timedelta(hours=2))  # IdP tokens live 10 minutes
    broker = make_broker(clock=clock)
    _assert_rejected(
        broker, web_login(http, broker.url, "alice", "alice-demo-pw"), "id_token_expired"
    )


def test_missing_pkce_verifier_is_refused_by_the_idp(
    tampered: RunningBroker, tamper: TamperTransport, http: httpx2.Client
) -> None:
    tamper.drop_form_fields = {"code_verifier"}
    resp = web_login(http, tampered.url, "alice", "alice-demo-pw")
    assert "code_verifier" not in tamper.token_requests[0]
    _assert_rejected(tampered, resp, "token_exchange_refused")


def test_replayed_state_is_rejected(broker: RunningBroker, http: httpx2.Client) -> None:
    authorize = begin_login(http, broker.url)
    callback = idp_login(http, authorize, "alice", "alice-demo-pw").headers["location"]
    assert http.get(callback).status_code == 303
    replay = http.get(callback)
    assert replay.status_code == 400 and ">unknown_state<" in replay.text
    assert [e["details"]["code"] for e in _rejections(broker)] == ["unknown_state"]


def test_callback_with_unknown_state_is_rejected(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    resp = http.get(f"{broker.url}/auth/callback", params={"state": "made-up", "code": "made-up"})
    _assert_rejected(broker, resp, "unknown_state")


def test_callback_in_another_browser_is_rejected(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    authorize = begin_login(http, broker.url)
    callback = idp_login(http, authorize, "alice", "alice-demo-pw").headers["location"]
    with httpx2.Client(timeout=TIMEOUT_S) as attacker:  # has the link, not the binding cookie
        resp = attacker.get(callback)
    _assert_rejected(broker, resp, "state_not_bound")


def test_idp_error_response_is_rejected(broker: RunningBroker, http: httpx2.Client) -> None:
    resp = http.get(f"{broker.url}/auth/callback", params={"error": "access_denied", "state": "x"})
    _assert_rejected(broker, resp, "idp_error")


def test_idp_unreachable_shows_an_error_page(
    make_broker: Callable[..., RunningBroker], http: httpx2.Client, client_secret: str
) -> None:
    from tests.harness.ports import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    broker = make_broker(
        oidc={"issuer": dead, "client_id": "conduit", "client_secret": client_secret}
    )
    resp = http.get(f"{broker.url}/login")
    assert resp.status_code == 503
    assert "Identity provider unavailable" in resp.text and ">idp_unavailable<" in resp.text
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    events = audit_events(broker, "auth.login")
    assert [(e["outcome"], e["details"]["code"]) for e in events] == [("error", "idp_unavailable")]


def test_user_without_groups_signs_in_with_no_roles(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    resp = web_login(http, broker.url, "nora", "nora-demo-pw")
    assert resp.status_code == 303
    home = http.get(f"{broker.url}/")
    assert 'id="no-role"' in home.text
    assert http.get(f"{broker.url}/api/whoami").json()["roles"] == []
    for path in ("/vendor", "/approvals", "/admin/assets", "/security/audit"):
        assert http.get(f"{broker.url}{path}").status_code == 403, path
    login = [e for e in audit_events(broker, "auth.login") if e["outcome"] == "ok"]
    assert login[0]["details"]["no_roles"] is True
    assert len(audit_events(broker, "access.denied")) == 4


def test_roles_gate_pages(broker: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, broker.url, "sam", "sam-demo-pw")
    assert http.get(f"{broker.url}/security/audit").status_code == 200
    assert http.get(f"{broker.url}/admin/assets").status_code == 403
    verify = http.get(f"{broker.url}/security/audit?verify=1")
    assert "Chain intact" in verify.text


def test_open_redirect_after_sign_in_is_prevented(
    broker: RunningBroker, http: httpx2.Client
) -> None:
    resp = web_login(http, broker.url, "alice", "alice-demo-pw", next_path="//evil.example/")
    assert resp.headers["location"] == "/"


def test_mfa_shows_in_amr(broker: RunningBroker, http: httpx2.Client) -> None:
    web_login(http, broker.url, "victor", "victor-demo-pw", otp="246810")
    assert "mfa" in http.get(f"{broker.url}/api/whoami").json()["amr"]
