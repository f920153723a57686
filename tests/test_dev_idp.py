"""Tests of the development OIDC IdP (deploy/dev-idp) through tests/harness/idp.py.

The IdP is the real npm oidc-provider run by node on 127.0.0.1; nothing is mocked.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.harness.idp import (
    IDP_DIR,
    RunningIdP,
    idp_login,
    idp_logout,
    pkce_pair,
    start_dev_idp,
)

PUBLIC_CLIENT = "conduit-public"
CONFIDENTIAL_CLIENT = "conduit"
CONFIDENTIAL_SECRET = "dev-idp-test-secret-" + "x" * 16
REDIRECT_URI = "http://127.0.0.1:8080/auth/callback"
POST_LOGOUT_URI = "http://127.0.0.1:8080/"
SCOPE = "openid profile email groups"

CLIENTS: list[dict[str, Any]] = [
    {
        "client_id": PUBLIC_CLIENT,
        "redirect_uris": [REDIRECT_URI],
        "post_logout_redirect_uris": [POST_LOGOUT_URI],
    },
    {
        "client_id": CONFIDENTIAL_CLIENT,
        "client_secret": CONFIDENTIAL_SECRET,
        "redirect_uris": [REDIRECT_URI],
        "post_logout_redirect_uris": [POST_LOGOUT_URI],
    },
]


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningIdP]:
    with start_dev_idp(tmp_path_factory.mktemp("dev-idp"), CLIENTS) as running:
        yield running
        assert running.process.poll() is None, f"IdP died during the tests:\n{running.logs()}"


@pytest.fixture(scope="module")
def discovery(idp: RunningIdP) -> dict[str, Any]:
    with httpx2.Client(trust_env=False, timeout=30) as client:
        response = client.get(idp.discovery_url)
    response.raise_for_status()
    doc: dict[str, Any] = response.json()
    return doc


@pytest.fixture
def browser() -> Iterator[httpx2.Client]:
    """A fresh user agent with its own cookie jar (never follows redirects on its own)."""
    with httpx2.Client(trust_env=False, timeout=30, follow_redirects=False) as client:
        yield client


class Flow:
    """One authorization request with its PKCE verifier, state and nonce."""

    def __init__(self, discovery: dict[str, Any], client_id: str = PUBLIC_CLIENT) -> None:
        self.discovery = discovery
        self.client_id = client_id
        self.verifier, self.challenge = pkce_pair()
        self.state = secrets.token_urlsafe(12)
        self.nonce = secrets.token_urlsafe(12)

    def authorize_url(self, **overrides: str | None) -> str:
        params: dict[str, str | None] = {
            "client_id": self.client_id,
            "response_type": "code",
            "redirect_uri": REDIRECT_URI,
            "scope": SCOPE,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": self.challenge,
            "code_challenge_method": "S256",
        }
        params.update(overrides)
        query = {k: v for k, v in params.items() if v is not None}
        return f"{self.discovery['authorization_endpoint']}?{urlencode(query)}"

    def code_from(self, response: httpx2.Response) -> str:
        assert response.status_code in (302, 303), response.text
        location = response.headers["location"]
        assert location.startswith(REDIRECT_URI + "?"), location
        query = parse_qs(urlsplit(location).query)
        assert query["state"] == [self.state]
        assert query["iss"] == [self.discovery["issuer"]]
        return query["code"][0]

    def exchange(
        self, client: httpx2.Client, code: str, verifier: str | None = None
    ) -> httpx2.Response:
        data = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier or self.verifier,
        }
        if self.client_id == CONFIDENTIAL_CLIENT:
            return client.post(
                self.discovery["token_endpoint"],
                data=data,
                auth=(CONFIDENTIAL_CLIENT, CONFIDENTIAL_SECRET),
            )
        data["client_id"] = self.client_id
        return client.post(self.discovery["token_endpoint"], data=data)


def verify_id_token(
    client: httpx2.Client, discovery: dict[str, Any], token: str, audience: str
) -> dict[str, Any]:
    """Verify signature (against the published jwks_uri), iss, aud and exp; return the claims."""
    key_set = KeySet.import_key_set(client.get(discovery["jwks_uri"]).json())
    decoded = jwt.decode(token, key_set, algorithms=["RS256"])
    assert decoded.header["alg"] == "RS256"
    assert decoded.header["kid"] == "dev-1"
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": discovery["issuer"]},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        sub={"essential": True},
    )
    registry.validate(decoded.claims)
    claims: dict[str, Any] = dict(decoded.claims)
    return claims


def login_and_get_tokens(
    browser: httpx2.Client,
    discovery: dict[str, Any],
    username: str,
    password: str,
    otp: str | None = None,
    client_id: str = PUBLIC_CLIENT,
) -> tuple[Flow, dict[str, Any], dict[str, Any]]:
    flow = Flow(discovery, client_id)
    response = idp_login(browser, flow.authorize_url(), username, password, otp)
    token_response = flow.exchange(browser, flow.code_from(response))
    assert token_response.status_code == 200, token_response.text
    tokens: dict[str, Any] = token_response.json()
    claims = verify_id_token(browser, discovery, tokens["id_token"], client_id)
    assert claims["nonce"] == flow.nonce
    return flow, tokens, claims


def assert_login_form_with_error(response: httpx2.Response) -> None:
    assert response.status_code == 200
    assert "location" not in response.headers
    assert 'id="login-error"' in response.text
    assert "Invalid username or password" in response.text
    assert 'id="login-submit"' in response.text


# --------------------------------------------------------------------------- tests


def test_discovery_lists_s256_pkce_and_endpoints(
    idp: RunningIdP, discovery: dict[str, Any]
) -> None:
    assert discovery["issuer"] == idp.issuer
    assert discovery["code_challenge_methods_supported"] == ["S256"]
    assert discovery["response_types_supported"] == ["code"]
    for endpoint in (
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
        "end_session_endpoint",
    ):
        assert discovery[endpoint].startswith(idp.issuer + "/"), endpoint
    assert {"openid", "profile", "email", "groups"} <= set(discovery["scopes_supported"])
    assert "offline_access" not in discovery["scopes_supported"]
    assert {"groups", "vendor_org", "amr", "acr", "email", "preferred_username"} <= set(
        discovery["claims_supported"]
    )
    assert discovery["id_token_signing_alg_values_supported"] == ["RS256"]


def test_jwks_uri_publishes_only_the_public_key(
    idp: RunningIdP, discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    published = browser.get(discovery["jwks_uri"]).json()
    assert [k["kid"] for k in published["keys"]] == ["dev-1"]
    key = published["keys"][0]
    assert "d" not in key
    assert key["n"] == idp.private_jwks["keys"][0]["n"]


@pytest.mark.parametrize("client_id", [PUBLIC_CLIENT, CONFIDENTIAL_CLIENT])
def test_authorization_without_code_challenge_is_refused(
    discovery: dict[str, Any], browser: httpx2.Client, client_id: str
) -> None:
    flow = Flow(discovery, client_id)
    url = flow.authorize_url(code_challenge=None, code_challenge_method=None)
    response = browser.get(url)
    assert response.status_code in (302, 303)
    location = response.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["invalid_request"]
    assert "PKCE" in query["error_description"][0]
    assert "code" not in query


def test_plain_pkce_method_is_refused(discovery: dict[str, Any], browser: httpx2.Client) -> None:
    flow = Flow(discovery)
    response = browser.get(
        flow.authorize_url(code_challenge=flow.verifier, code_challenge_method="plain")
    )
    assert response.status_code in (302, 303)
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["invalid_request"]
    assert "code" not in query


def test_full_code_flow_with_pkce_for_alice(
    discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    flow, tokens, claims = login_and_get_tokens(browser, discovery, "alice", "alice-demo-pw")
    assert claims["sub"] == "u-vendor-alice"
    assert claims["aud"] == PUBLIC_CLIENT
    assert claims["groups"] == ["conduit-vendors"]
    assert claims["vendor_org"] == "acme-automation"
    assert claims["amr"] == ["pwd"]
    assert claims["acr"] == "urn:conduit:pwd"
    assert claims["email"] == "alice@acme-automation.example"
    assert claims["email_verified"] is True
    assert claims["name"] == "Alice Vendor"
    assert claims["preferred_username"] == "alice"
    assert claims["nonce"] == flow.nonce
    assert claims["exp"] - claims["iat"] <= 600

    userinfo = browser.get(
        discovery["userinfo_endpoint"],
        headers={"authorization": f"Bearer {tokens['access_token']}"},
    )
    assert userinfo.status_code == 200
    info = userinfo.json()
    assert info["sub"] == "u-vendor-alice"
    assert info["groups"] == ["conduit-vendors"]
    assert info["vendor_org"] == "acme-automation"


def test_code_flow_for_confidential_client(
    discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    _, _, claims = login_and_get_tokens(
        browser, discovery, "olga", "olga-demo-pw", client_id=CONFIDENTIAL_CLIENT
    )
    assert claims["aud"] == CONFIDENTIAL_CLIENT
    assert claims["groups"] == ["ot-approvers", "ot-press-line"]
    assert "vendor_org" not in claims


def test_confidential_client_needs_its_secret(
    discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    flow = Flow(discovery, CONFIDENTIAL_CLIENT)
    code = flow.code_from(idp_login(browser, flow.authorize_url(), "adam", "adam-demo-pw"))
    response = browser.post(
        discovery["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": flow.verifier,
        },
        auth=(CONFIDENTIAL_CLIENT, "wrong-secret"),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_scopes_limit_the_id_token_claims(
    discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    flow = Flow(discovery)
    response = idp_login(browser, flow.authorize_url(scope="openid"), "alice", "alice-demo-pw")
    tokens = flow.exchange(browser, flow.code_from(response)).json()
    claims = verify_id_token(browser, discovery, tokens["id_token"], PUBLIC_CLIENT)
    assert claims["sub"] == "u-vendor-alice"
    assert claims["amr"] == ["pwd"]
    for absent in ("groups", "vendor_org", "email", "name"):
        assert absent not in claims


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "wrong-password"), ("mallory", "alice-demo-pw"), ("alice", "")],
)
def test_wrong_credentials_rerender_the_form_without_redirect(
    discovery: dict[str, Any], browser: httpx2.Client, username: str, password: str
) -> None:
    flow = Flow(discovery)
    response = idp_login(browser, flow.authorize_url(), username, password)
    assert_login_form_with_error(response)
    # The same user agent can still sign in afterwards with the right password.
    retry = idp_login(browser, flow.authorize_url(), "alice", "alice-demo-pw")
    assert flow.code_from(retry)


def test_wrong_code_verifier_is_invalid_grant(
    discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    flow = Flow(discovery)
    code = flow.code_from(idp_login(browser, flow.authorize_url(), "alice", "alice-demo-pw"))
    other_verifier, _ = pkce_pair()
    response = flow.exchange(browser, code, verifier=other_verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_code_cannot_be_redeemed_twice(discovery: dict[str, Any], browser: httpx2.Client) -> None:
    flow = Flow(discovery)
    code = flow.code_from(idp_login(browser, flow.authorize_url(), "sam", "sam-demo-pw"))
    assert flow.exchange(browser, code).status_code == 200
    again = flow.exchange(browser, code)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"


def test_user_without_groups_gets_no_groups_claim(
    discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    _, tokens, claims = login_and_get_tokens(browser, discovery, "nora", "nora-demo-pw")
    assert claims["sub"] == "u-nogroups-nora"
    assert "groups" not in claims
    assert "vendor_org" not in claims
    info = browser.get(
        discovery["userinfo_endpoint"],
        headers={"authorization": f"Bearer {tokens['access_token']}"},
    ).json()
    assert "groups" not in info


def test_otp_user_with_code_gets_mfa(discovery: dict[str, Any], browser: httpx2.Client) -> None:
    _, _, claims = login_and_get_tokens(
        browser, discovery, "victor", "victor-demo-pw", otp="246810"
    )
    assert claims["sub"] == "u-vendor-victor"
    assert claims["amr"] == ["pwd", "otp", "mfa"]
    assert claims["acr"] == "urn:conduit:mfa"


@pytest.mark.parametrize("otp", [None, "", "000000"])
def test_otp_user_without_valid_code_is_refused(
    discovery: dict[str, Any], browser: httpx2.Client, otp: str | None
) -> None:
    flow = Flow(discovery)
    response = idp_login(browser, flow.authorize_url(), "victor", "victor-demo-pw", otp)
    assert_login_form_with_error(response)
    assert "one-time code" in response.text


def test_existing_session_is_reused_without_login_form(
    discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    login_and_get_tokens(browser, discovery, "paul", "paul-demo-pw")
    flow = Flow(discovery)
    # Credentials are not used: the IdP session answers straight away.
    response = idp_login(browser, flow.authorize_url(), "ignored", "ignored")
    code = flow.code_from(response)
    claims = verify_id_token(
        browser, discovery, flow.exchange(browser, code).json()["id_token"], PUBLIC_CLIENT
    )
    assert claims["sub"] == "u-approver-paul"


def test_end_session_logs_out_without_confirmation_click(
    discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    _, tokens, _ = login_and_get_tokens(browser, discovery, "alice", "alice-demo-pw")
    end_session = (
        discovery["end_session_endpoint"]
        + "?"
        + urlencode(
            {
                "id_token_hint": tokens["id_token"],
                "post_logout_redirect_uri": POST_LOGOUT_URI,
                "state": "bye",
            }
        )
    )

    # What a browser sees: a page whose form auto-submits (logout=yes) with JavaScript.
    page = browser.get(end_session)
    assert page.status_code == 200
    assert 'id="op.logoutForm"' in page.text
    assert 'name="logout" value="yes"' in page.text
    assert ".submit()" in page.text

    response = idp_logout(browser, end_session)
    assert response.status_code in (302, 303)
    assert response.headers["location"] == POST_LOGOUT_URI + "?state=bye"

    # The IdP session is gone: a new authorization request shows the login form again.
    flow = Flow(discovery)
    again = browser.get(flow.authorize_url())
    for _ in range(5):
        if not again.is_redirect:
            break
        target = urljoin(str(again.url), again.headers["location"])
        assert target.startswith(discovery["issuer"] + "/"), target
        again = browser.get(target)
    assert again.status_code == 200
    assert 'id="login-submit"' in again.text
    assert 'name="password"' in again.text


def test_end_session_rejects_unregistered_post_logout_uri(
    discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    _, tokens, _ = login_and_get_tokens(browser, discovery, "alice", "alice-demo-pw")
    response = browser.get(
        discovery["end_session_endpoint"],
        params={
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": "http://127.0.0.1:9999/evil",
        },
    )
    assert response.status_code == 400
    assert "location" not in response.headers


def test_malformed_requests_do_not_crash_the_idp(
    idp: RunningIdP, discovery: dict[str, Any], browser: httpx2.Client
) -> None:
    issuer = discovery["issuer"]
    responses = [
        browser.get(discovery["authorization_endpoint"]),
        browser.get(discovery["authorization_endpoint"], params={"client_id": "nope"}),
        browser.post(discovery["token_endpoint"], content=b"\xff\x00garbage"),
        browser.post(discovery["token_endpoint"], data={"grant_type": "authorization_code"}),
        browser.get(f"{issuer}/interaction/does-not-exist"),
        browser.post(f"{issuer}/interaction/does-not-exist/login", data={"username": "x"}),
        browser.post(
            f"{issuer}/interaction/x/login",
            content=b"username=" + b"a" * 100_000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        browser.get(f"{issuer}/interaction/../../etc/passwd"),
        browser.get(discovery["end_session_endpoint"], params={"id_token_hint": "not.a.jwt"}),
        browser.get(discovery["userinfo_endpoint"], headers={"authorization": "Bearer junk"}),
    ]
    for response in responses:
        assert 400 <= response.status_code < 500, (response.request.url, response.status_code)
    assert browser.get(idp.discovery_url).status_code == 200
    assert idp.process.poll() is None


def test_bad_config_exits_non_zero_with_message(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"issuer": "http://127.0.0.1:1", "port": "nope"}))
    result = subprocess.run(
        ["node", str(IDP_DIR / "server.js"), str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "bad config" in result.stderr
    assert '"port"' in result.stderr
    assert "listening" not in result.stdout


def test_launcher_reports_early_exit(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="exited with code"):
        start_dev_idp(tmp_path, [{"client_id": "broken"}])
