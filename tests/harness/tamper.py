"""A transport between the broker and the real IdP that can alter token requests and answers.

The IdP stays real: the broker does discovery, PKCE and the code exchange against it. A test
installs hooks to strip the PKCE verifier from the token request or to replace the ID token
in the token response, proving the broker rejects what a malicious network or IdP could send.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx2
from joserfc import jwt
from joserfc.jwk import RSAKey

IdTokenHook = Callable[[str], str]


class TamperTransport(httpx2.AsyncBaseTransport):
    def __init__(self) -> None:
        self._inner = httpx2.AsyncHTTPTransport()
        self.drop_form_fields: set[str] = set()
        self.id_token_hook: IdTokenHook | None = None
        self.token_requests: list[dict[str, str]] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        is_token = request.method == "POST" and request.url.path.endswith("/token")
        if is_token:
            body = await request.aread()
            fields = [(k, v) for k, v in parse_qsl(body.decode()) if k not in self.drop_form_fields]
            self.token_requests.append(dict(fields))
            content = urlencode(fields).encode()
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            request = httpx2.Request(request.method, request.url, headers=headers, content=content)
        response = await self._inner.handle_async_request(request)
        if not (is_token and self.id_token_hook and response.status_code == 200):
            return response
        data = json.loads(await response.aread())
        data["id_token"] = self.id_token_hook(data["id_token"])
        return httpx2.Response(200, json=data, headers={"cache-control": "no-store"})

    async def aclose(self) -> None:
        await self._inner.aclose()


def claims_of(id_token: str) -> dict[str, Any]:
    """Decode a JWT payload without verifying it (tests only: to copy real claims)."""
    import base64

    payload = id_token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload))
    return result


def resign(private_jwks: dict[str, Any], claims: dict[str, Any]) -> str:
    """Sign ``claims`` with the IdP's own key, as a compromised or confused IdP could."""
    jwk = private_jwks["keys"][0]
    key = RSAKey.import_key(jwk)
    return jwt.encode({"alg": "RS256", "kid": jwk["kid"], "typ": "JWT"}, claims, key)


def unsigned(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token carrying ``claims``."""
    import base64

    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
