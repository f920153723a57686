"""``conduit login``, ``conduit logout``, ``conduit whoami``: the vendor's CLI identity.

``login`` opens the browser on the broker's ``/cli/authorize`` with a loopback callback and
PKCE; ``login --no-browser`` uses the device flow (URL + code, then polls). Either way the
result is a short-lived broker token stored by :mod:`broker.cli.credentials`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import secrets
import sys
import threading
import time
import webbrowser
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2

from broker.cli import credentials, ssh_cmd
from broker.cli.api_client import unreachable
from broker.runtime.errors import BrokerError
from sessions.clock import SystemClock

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
LOGIN_TIMEOUT_S = 300.0
DONE_TEXT = "Signed in. You can close this window and return to the terminal."


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("login", help="sign the CLI in to a broker")
    p.add_argument("--broker", help="broker URL (default: the last one used)")
    p.add_argument(
        "--no-browser",
        action="store_true",
        help="print a URL and a code instead of opening a browser (device flow)",
    )
    p.add_argument("--timeout", type=float, default=LOGIN_TIMEOUT_S, help=argparse.SUPPRESS)
    p.set_defaults(func=login)
    o = sub.add_parser(
        "logout", help="revoke the broker token (and its SSH certificates), then forget it"
    )
    o.add_argument("--broker")
    o.set_defaults(func=logout)
    w = sub.add_parser("whoami", help="show the signed-in identity, roles and token expiry")
    w.add_argument("--broker")
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=whoami)


def _broker_url(args: argparse.Namespace) -> str:
    url = args.broker or (stored.broker if (stored := credentials.load()) else None)
    if not url:
        raise BrokerError("no broker known yet: pass --broker URL", code="no_broker")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise BrokerError(f"--broker {url!r} is not an http(s) URL", code="bad_broker")
    if parts.scheme == "http" and parts.hostname not in {"127.0.0.1", "localhost", "::1"}:
        raise BrokerError(
            "refusing to send credentials to a non-loopback broker over http",
            code="insecure_broker",
        )
    return url.rstrip("/")


def _client() -> httpx2.Client:
    return httpx2.Client(timeout=10.0, follow_redirects=False)


def _post_token(client: httpx2.Client, broker: str, body: dict[str, str]) -> httpx2.Response:
    try:
        return client.post(f"{broker}/api/cli/token", json=body)
    except httpx2.HTTPError as exc:
        raise unreachable(broker, exc) from exc


def _finish(client: httpx2.Client, broker: str, token: dict[str, Any]) -> int:
    access = str(token["access_token"])
    me = client.get(f"{broker}/api/whoami", headers={"Authorization": f"Bearer {access}"}).json()
    path = credentials.save(
        credentials.StoredToken(
            broker=broker,
            access_token=access,
            expires_at=str(token["expires_at"]),
            name=str(me.get("name", "")),
            email=str(me.get("email", "")),
        )
    )
    roles = ", ".join(me.get("roles") or []) or "none"
    print(f"Signed in to {broker} as {me.get('name')} <{me.get('email')}> (roles: {roles}).")
    print(f"Token expires at {token['expires_at']}; stored in {path}.")
    return 0


def _device_login(client: httpx2.Client, broker: str, timeout: float) -> int:
    try:
        resp = client.post(f"{broker}/api/cli/device", json={"client_name": "conduit CLI"})
    except httpx2.HTTPError as exc:
        raise unreachable(broker, exc) from exc
    if resp.status_code == 429:
        raise BrokerError(
            f"broker refused to start a sign-in: {resp.json().get('error_description', '')}",
            code="login_failed",
        )
    if resp.status_code != 200:
        raise BrokerError(
            f"broker refused to start a sign-in ({resp.status_code})", code="login_failed"
        )
    start = resp.json()
    print("To sign in, open this URL in any browser:")
    print(f"  {start['verification_uri']}")
    print(f"and type the code {start['user_code']}")
    print("Waiting for approval...", flush=True)
    interval = max(1.0, float(start.get("interval", 2)))
    clock = SystemClock()
    wait_s = min(timeout, float(start.get("expires_in", timeout)))
    deadline = clock.now() + timedelta(seconds=wait_s)
    while clock.now() < deadline:
        time.sleep(interval)
        tok = _post_token(
            client, broker, {"grant_type": DEVICE_GRANT, "device_code": start["device_code"]}
        )
        if tok.status_code == 200:
            return _finish(client, broker, tok.json())
        err = (
            tok.json().get("error")
            if tok.headers.get("content-type", "").startswith("application/json")
            else None
        )
        if err == "authorization_pending":
            continue
        if err == "slow_down":
            interval += 2
            continue
        raise BrokerError(f"sign-in failed: {err or tok.status_code}", code="login_failed")
    raise BrokerError("sign-in timed out; run `conduit login` again", code="login_timeout")


class _Answer:
    """What the browser brought back to the loopback listener (first /callback hit wins)."""

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self.done = threading.Event()


class _Callback(BaseHTTPRequestHandler):
    server: _LoopbackServer

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        answer = self.server.answer
        if parts.path != "/callback" or answer.done.is_set():
            self.send_error(404)
            return
        answer.params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        ok = "code" in answer.params
        body = (
            "<!doctype html><title>Conduit</title><p>"
            + html.escape(DONE_TEXT if ok else "Sign-in was not completed.")
            + "</p>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        answer.done.set()

    def log_message(self, format: str, *args: Any) -> None:  # keep codes out of the terminal
        return


class _LoopbackServer(HTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Callback)
        self.answer = _Answer()


def _browser_login(client: httpx2.Client, broker: str, timeout: float) -> int:
    try:  # before a browser is opened on a page that cannot load
        client.get(f"{broker}/healthz")
    except httpx2.HTTPError as exc:
        raise unreachable(broker, exc) from exc
    server = _LoopbackServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        redirect_uri = f"http://127.0.0.1:{server.server_port}/callback"
        verifier = secrets.token_urlsafe(48)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        state = secrets.token_urlsafe(24)
        url = f"{broker}/cli/authorize?" + urlencode(
            {
                "redirect_uri": redirect_uri,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                "state": state,
                "client_name": "conduit CLI",
            }
        )
        print(
            f"Opening {url}\nIf no browser opens, visit it yourself (or use --no-browser).",
            flush=True,
        )
        webbrowser.open(url)
        if not server.answer.done.wait(timeout):
            raise BrokerError("sign-in timed out; run `conduit login` again", code="login_timeout")
        result = server.answer.params
        if result.get("state") != state:
            raise BrokerError("sign-in answer has the wrong state; ignored", code="login_failed")
        if "code" not in result:
            raise BrokerError(
                f"sign-in failed: {result.get('error', 'no code')}", code="login_failed"
            )
        tok = _post_token(
            client,
            broker,
            {
                "grant_type": "authorization_code",
                "code": result["code"],
                "code_verifier": verifier,
                "redirect_uri": redirect_uri,
            },
        )
        if tok.status_code != 200:
            raise BrokerError(f"sign-in failed: {tok.text[:200]}", code="login_failed")
        return _finish(client, broker, tok.json())
    finally:
        server.shutdown()
        server.server_close()


def login(args: argparse.Namespace) -> int:
    broker = _broker_url(args)
    with _client() as client:
        if args.no_browser:
            return _device_login(client, broker, args.timeout)
        return _browser_login(client, broker, args.timeout)


def _revoke(stored: credentials.StoredToken) -> str | None:
    """Revoke the token at the broker; None on success, else why it could not be done."""
    try:
        with _client() as client:
            resp = client.post(
                f"{stored.broker}/api/cli/logout",
                headers={"Authorization": f"Bearer {stored.access_token}"},
            )
    except httpx2.HTTPError as exc:
        return unreachable(stored.broker, exc).message
    if resp.status_code in (200, 401):  # 401: already revoked or expired
        return None
    return f"broker answered {resp.status_code}"


def logout(args: argparse.Namespace) -> int:
    """Revoke the token at the broker (its SSH certificates die with it), then forget it and
    the SSH certificate made with it. The local copy is removed even if the broker cannot be
    reached; the exit code is then 1 and the token stays valid until it expires."""
    stored = credentials.load(args.broker)
    if stored is None:
        print("Not signed in.")
        return 0
    problem = None if stored.expired() else _revoke(stored)
    credentials.forget(stored.broker)
    ssh_cmd.forget_certificate(stored.broker)
    if problem is not None:
        print(
            f"conduit: forgot the token for {stored.broker}, but could not revoke it ({problem}); "
            "it stays valid until it expires.",
            file=sys.stderr,
        )
        return 1
    print(f"Signed out of {stored.broker}: token revoked and forgotten.")
    return 0


def whoami(args: argparse.Namespace) -> int:
    stored = credentials.load(args.broker)
    if stored is None:
        print("conduit: not signed in: run `conduit login --broker URL`", file=sys.stderr)
        return 1
    if stored.expired():
        print(
            f"conduit: the sign-in to {stored.broker} expired at {stored.expires_at}: "
            "run `conduit login`",
            file=sys.stderr,
        )
        return 1
    with _client() as client:
        try:
            resp = client.get(
                f"{stored.broker}/api/whoami",
                headers={"Authorization": f"Bearer {stored.access_token}"},
            )
        except httpx2.HTTPError as exc:
            raise unreachable(stored.broker, exc) from exc
    if resp.status_code == 401:
        print(
            "conduit: the broker no longer accepts the stored token: run `conduit login`",
            file=sys.stderr,
        )
        return 1
    if resp.status_code != 200:
        raise BrokerError(f"broker answered {resp.status_code}", code="whoami_failed")
    me = resp.json()
    if args.json:
        import json

        print(json.dumps(me, indent=2))
        return 0
    print(f"Broker:   {stored.broker}")
    print(f"Name:     {me['name']}")
    print(f"Email:    {me['email']}")
    print(f"Subject:  {me['sub']}")
    print(f"Roles:    {', '.join(me['roles']) or 'none (no access)'}")
    print(f"Expires:  {me['expires_at']}")
    return 0
