"""Browser-less driver for the development OIDC IdP (deploy/dev-idp).

The IdP is the real npm ``oidc-provider`` run by node, started by :mod:`broker.dev.devidp`
(re-exported here); this module drives its HTML login / logout pages the way a browser would
(``idp_login``, ``idp_logout``) so tests can act as a second, non-browser user agent.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx2

from broker.dev.devidp import (
    DEFAULT_USERS_PATH,
    IDP_DIR,
    REPO_ROOT,
    RunningIdP,
    generate_rsa_jwks,
    start_dev_idp,
)

__all__ = [
    "DEFAULT_USERS_PATH",
    "IDP_DIR",
    "REPO_ROOT",
    "RunningIdP",
    "generate_rsa_jwks",
    "idp_login",
    "idp_logout",
    "pkce_pair",
    "start_dev_idp",
]

_MAX_HOPS = 20


def pkce_pair() -> tuple[str, str]:
    """Return ``(code_verifier, code_challenge)`` for PKCE method S256."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return verifier, challenge


# --------------------------------------------------------------------------- form driving


@dataclass
class _Form:
    attrs: dict[str, str]
    fields: list[tuple[str, str]] = field(default_factory=list)
    names: set[str] = field(default_factory=set)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[_Form] = []
        self._current: _Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "form":
            self._current = _Form(attrs=a)
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            self._current.names.add(a["name"])
            if a.get("type", "text").lower() == "hidden":
                self._current.fields.append((a["name"], a.get("value", "")))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def _forms(html: str) -> list[_Form]:
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def _origin(url: str | httpx2.URL) -> tuple[str, str, int | None]:
    parts = urlsplit(str(url))
    port = parts.port
    if port is None:
        port = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname or "", port


def _follow_on_origin(
    client: httpx2.Client, response: httpx2.Response, origin: tuple[str, str, int | None]
) -> httpx2.Response:
    """Follow redirects while they stay on ``origin``; stop at one that leaves it."""
    for _ in range(_MAX_HOPS):
        if not response.is_redirect:
            return response
        target = urljoin(str(response.url), response.headers["location"])
        if _origin(target) != origin:
            return response
        response = client.get(target, follow_redirects=False)
    raise RuntimeError(f"more than {_MAX_HOPS} redirects on the IdP, last: {response.url}")


def _submit(
    client: httpx2.Client, page: httpx2.Response, form: _Form, extra: dict[str, str]
) -> httpx2.Response:
    action = urljoin(str(page.url), form.attrs.get("action") or str(page.url))
    data = dict(form.fields)
    data.update(extra)
    if form.attrs.get("method", "get").lower() != "post":
        return client.get(action, params=data, follow_redirects=False)
    return client.post(action, data=data, follow_redirects=False)


def idp_login(
    client: httpx2.Client,
    authorize_url: str,
    username: str,
    password: str,
    otp: str | None = None,
) -> httpx2.Response:
    """Sign in at the dev IdP like a browser without JavaScript, and stop before the client.

    Contract:
    1. GET ``authorize_url`` and follow redirects while they stay on the IdP's origin (scheme,
       host, port of ``authorize_url``).
    2. If a redirect leaves the IdP before any login form (error redirect to the client, or an
       existing IdP session that needs no login), return that redirect response unfollowed.
    3. If the page has no login form (one with a ``password`` input), return it (an error page).
    4. Otherwise POST the form (its hidden inputs plus ``username``, ``password`` and, when given,
       ``otp``) to its action, follow redirects while on the IdP, and return the first response
       whose ``Location`` leaves the IdP - normally the 303 to the client's redirect_uri carrying
       ``code``/``state``/``iss`` - WITHOUT following it.
    5. If nothing leaves the IdP, return the final IdP response (e.g. the login form re-rendered
       with HTTP 200 and ``id="login-error"`` after a wrong password).
    The caller's ``client`` keeps the IdP cookies (session), so a later call reuses the session.
    """
    origin = _origin(authorize_url)
    response = _follow_on_origin(client, client.get(authorize_url, follow_redirects=False), origin)
    if response.is_redirect or response.status_code != 200:
        return response
    login_forms = [f for f in _forms(response.text) if "password" in f.names]
    if not login_forms:
        return response
    credentials = {"username": username, "password": password}
    if otp is not None:
        credentials["otp"] = otp
    submitted = _submit(client, response, login_forms[0], credentials)
    return _follow_on_origin(client, submitted, origin)


def idp_logout(client: httpx2.Client, end_session_url: str) -> httpx2.Response:
    """RP-initiated logout like a browser: GET the end-session URL and run the auto-submit form.

    The IdP's logout page auto-submits its confirmation form with JavaScript; this helper does the
    same POST (the form's hidden inputs, which include ``logout=yes``), follows redirects while on
    the IdP and returns the first response leaving it (the redirect to
    ``post_logout_redirect_uri``, unfollowed) or the final IdP page (the "signed out" page when no
    post_logout_redirect_uri was given, or an error page).
    """
    origin = _origin(end_session_url)
    response = _follow_on_origin(
        client, client.get(end_session_url, follow_redirects=False), origin
    )
    for _ in range(3):
        if response.is_redirect or response.status_code != 200:
            return response
        forms = [f for f in _forms(response.text) if f.attrs.get("method", "").lower() == "post"]
        if not forms or "xsrf" not in forms[0].names:
            return response
        response = _follow_on_origin(client, _submit(client, response, forms[0], {}), origin)
    return response
