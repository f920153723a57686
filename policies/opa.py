"""The OPA decision point: asks an OPA server's data API for the access decision.

``POST {url}/v1/data/conduit/access/decision?provenance=true`` with ``{"input": document}``;
OPA answers ``{"result": ...}``, or no ``result`` key when the decision is undefined. Every
problem becomes a deny whose single reason names it, never an exception:

- connection refused / reset, TLS failure, timeout, HTTP 5xx: retried ``retries`` times (50 ms
  backoff, doubling), then ``policy server unreachable: ...``, ``policy server timed out after
  500 ms ...`` or ``policy server error: HTTP 500 internal_error: ...``;
- HTTP 4xx (bad token, bad request) and 3xx (redirects are not followed): not retried,
  ``policy server rejected the query: HTTP 401 unauthorized: <OPA's message>``;
- no ``result``: ``policy returned no decision (undefined)``; a result that breaks the contract:
  :func:`policies.decision.parse_decision`'s ``policy returned a malformed decision: ...``.

Data: :meth:`OpaEngine.push_data` writes each top-level document with OPA's Data API, ``PUT
{url}/v1/data/<name>`` whose body is the document's JSON value (``{"plant": {...}}`` becomes
``data.plant``), with the same token, CA, timeout and retries as decisions (2xx is success,
connection problems, timeouts and 5xx are retried, 4xx/3xx are not). A failed push raises
:class:`PolicyError` (code ``opa_data_push``) naming the document and the failure; OPA keeps
the data it had, so a bundle that needs ``data.plant`` (the default one assumes a lockout
without it) denies until a push succeeded.

``timeout_s`` bounds each attempt as a whole (connect + send + read), so a decision takes at
most ``(retries + 1) * timeout_s`` plus the backoff. Decisions are stamped ``engine="opa"``,
``input_hash`` (of the document exactly as sent), ``elapsed_ms`` (the whole call, retries
included) and ``bundle_version``: the bundle revision from the response's provenance, else
from ``GET /v1/status`` (cached for a minute), else None. The bearer token is sent only as a
header: it never appears in reasons, logs or reprs, and proxies from the environment are
ignored (``trust_env=False``) so the query and token go only to ``url``.

Why not opa-python-client's ``AsyncOpaClient`` (3.0.0, on aiohttp), the library the design
named: it cannot meet four requirements here. (1) TLS: ``ssl=True`` builds a default context
and loads ``cert`` as a *client* certificate; a private plant CA cannot be given. (2) Errors:
``query_rule`` calls ``raise_for_status()`` before reading the body, so OPA's 4xx/5xx
``{"code", "message"}`` is lost (only the reason phrase is left). (3) Retries: a hard-coded
0.3 s x 2^n backoff (longer than our 0.5 s budget), 503 not retried despite its docstring, and
an aiohttp total timeout raises a bare ``TimeoutError`` that is not retried at all. (4) It
takes host/port, not a URL, and needs its session opened in ``__aenter__``. Its only parts we
could use are URL building and the Authorization header, so this module uses ``httpx2`` (the
project's HTTP client) directly with the same REST calls.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2

from policies.canonical import canonical_bytes
from policies.clock import Clock, SystemClock
from policies.decision import (
    DECISION_QUERY,
    Decision,
    deny,
    input_hash,
    parse_decision,
)
from policies.errors import PolicyError

BACKOFF_S = 0.05
STATUS_TTL_S = 60.0
_MAX_MESSAGE = 200
_QUERY = re.compile(r"^data(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class OpaEngine:
    """Engine adapter for an OPA server. Construct once, share, ``aclose()`` at shutdown.

    The constructor raises :class:`PolicyError` (code ``opa_config``) for an unusable ``url``
    (not http/https, credentials or a query in it), a ``ca_file`` with an http URL or that
    cannot be loaded, a non-positive ``timeout_s``, negative ``retries`` or a ``query`` that
    is not a ``data.a.b`` reference. Nothing is sent until the first call.
    """

    name = "opa"

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        ca_file: Path | None = None,
        timeout_s: float = 0.5,
        retries: int = 1,
        query: str = DECISION_QUERY,
        clock: Clock | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PolicyError(f"OPA url {url!r} must be http(s)://host[:port]", code="opa_config")
        if parts.username is not None or parts.password is not None or parts.query:
            raise PolicyError(
                "OPA url must not carry credentials or a query (use token=)", code="opa_config"
            )
        if ca_file is not None and parts.scheme != "https":
            raise PolicyError("OPA ca_file given for an http:// url", code="opa_config")
        if not timeout_s > 0 or retries < 0:
            raise PolicyError("OPA timeout_s must be > 0 and retries >= 0", code="opa_config")
        if not _QUERY.match(query):
            raise PolicyError(f"OPA query {query!r} is not a data.x.y reference", code="opa_config")
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise PolicyError(
                    f"cannot load OPA CA file {ca_file}: {exc}", code="opa_config"
                ) from exc
        self.url = url.rstrip("/")
        self.query = query
        self._data_url = f"{self.url}/v1/{query.replace('.', '/')}"
        self._timeout_s = timeout_s
        self._timeout_text = f"{timeout_s * 1000:g} ms"
        self._retries = retries
        self._secret = token
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx2.AsyncClient(
            headers=headers,
            verify=verify,
            timeout=timeout_s,
            trust_env=False,
            follow_redirects=False,
        )
        self._clock = clock or SystemClock()  # the status cache's age
        self._closed = False
        self._status_version: str | None = None
        self._status_checked = float("-inf")

    def __repr__(self) -> str:
        return f"OpaEngine(url={self.url!r}, query={self.query!r})"

    async def decide(self, document: Mapping[str, Any]) -> Decision:
        """Ask OPA for one decision; never raises (see the module docstring for the denies)."""
        start = time.perf_counter_ns()
        try:  # NaN/Infinity are not JSON (OPA rejects them): canonical_json refuses them
            body = canonical_bytes({"input": dict(document)})
            digest = input_hash(dict(document))  # the same canonical form as the body's input
        except (TypeError, ValueError) as exc:
            return deny(f"policy input is not a JSON document: {exc}", engine=self.name)
        if self._closed:
            decision, version = deny("policy engine is closed"), None
        else:
            decision, version = await self._ask(body)
        return decision.stamped(
            engine=self.name,
            bundle_version=version,
            input_hash=digest,
            elapsed_ms=(time.perf_counter_ns() - start) / 1e6,
        )

    async def push_data(self, data: Mapping[str, Any]) -> None:
        """PUT each top-level document of ``data`` to ``/v1/data/<name>``; raises PolicyError."""
        if self._closed:
            raise PolicyError("pushing policy data: policy engine is closed", code="opa_data_push")
        for name, value in data.items():
            if not isinstance(name, str) or not _IDENT.match(name):
                raise PolicyError(
                    f"pushing policy data: document name {name!r} is not an identifier",
                    code="opa_data_push",
                )
            try:
                body = canonical_bytes(value)
            except (TypeError, ValueError) as exc:
                raise PolicyError(
                    f"pushing data.{name}: not a JSON document: {exc}", code="opa_data_push"
                ) from exc
            problem = await self._put(f"{self.url}/v1/data/{name}", body)
            if problem is not None:
                raise PolicyError(f"pushing data.{name} failed: {problem}", code="opa_data_push")

    async def healthy(self) -> bool:
        """True when ``GET /health`` answers 200 within ``timeout_s``; never raises."""
        if self._closed:
            return False
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.get(f"{self.url}/health")
        except (TimeoutError, httpx2.HTTPError):
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        """Close the connection pool; later decisions are denies. Idempotent."""
        self._closed = True
        await self._client.aclose()

    # ----------------------------------------------------------------------------- internals

    async def _ask(self, body: bytes) -> tuple[Decision, str | None]:
        failure = deny("policy server was not asked")
        attempts = self._retries + 1
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                async with asyncio.timeout(self._timeout_s):
                    response = await self._client.post(
                        self._data_url, content=body, params={"provenance": "true"}
                    )
            except (TimeoutError, httpx2.TimeoutException):
                failure = deny(f"policy server timed out after {self._timeout_text}")
                continue
            except httpx2.TransportError as exc:
                failure = deny(f"policy server unreachable: {self._describe(exc)}")
                continue
            except Exception as exc:  # fail closed on anything unexpected from the client
                return deny(f"policy query failed: {self._describe(exc)}"), None
            if response.status_code >= 500:
                failure = deny(f"policy server error: {self._server_error(response)}")
                continue
            return await self._answer(response)
        note = f" ({self.url}, {attempts} attempts)" if attempts > 1 else f" ({self.url})"
        return failure.stamped(reasons=(failure.reasons[0] + note,)), None

    async def _put(self, url: str, body: bytes) -> str | None:
        """One document to OPA with the decision retry schedule; None, or what went wrong."""
        problem = "policy server was not asked"
        attempts = self._retries + 1
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                async with asyncio.timeout(self._timeout_s):
                    response = await self._client.put(url, content=body)
            except (TimeoutError, httpx2.TimeoutException):
                problem = f"policy server timed out after {self._timeout_text}"
                continue
            except httpx2.TransportError as exc:
                problem = f"policy server unreachable: {self._describe(exc)}"
                continue
            except Exception as exc:  # anything unexpected from the client is a failed push
                return f"policy server request failed: {self._describe(exc)}"
            if response.status_code >= 500:
                problem = f"policy server error: {self._server_error(response)}"
                continue
            if not 200 <= response.status_code < 300:
                return f"policy server rejected the data: {self._server_error(response)}"
            return None
        note = f" ({self.url}, {attempts} attempts)" if attempts > 1 else f" ({self.url})"
        return problem + note

    async def _answer(self, response: httpx2.Response) -> tuple[Decision, str | None]:
        if response.status_code != 200:
            return deny(f"policy server rejected the query: {self._server_error(response)}"), None
        try:
            payload = response.json()
        except ValueError:
            return deny("policy server answered with a body that is not JSON"), None
        if not isinstance(payload, dict):
            return deny("policy server answered with a body that is not a JSON object"), None
        version = _provenance_version(payload.get("provenance"))
        if version is None:
            version = await self._status_bundle_version()
        if "result" not in payload:
            return deny("policy returned no decision (undefined)"), version
        return parse_decision(payload["result"]), version

    async def _status_bundle_version(self) -> str | None:
        """Bundle revision(s) from ``GET /v1/status``, asked at most once per STATUS_TTL_S."""
        now = self._clock.now().timestamp()
        if now - self._status_checked < STATUS_TTL_S:
            return self._status_version
        self._status_checked = now
        version = None
        try:
            async with asyncio.timeout(self._timeout_s):
                response = await self._client.get(f"{self.url}/v1/status")
            if response.status_code == 200:
                result = response.json().get("result") or {}
                bundles = result.get("bundles") if isinstance(result, dict) else None
                version = _join_revisions(bundles, "active_revision")
        except (TimeoutError, httpx2.HTTPError, ValueError, AttributeError):
            version = None
        self._status_version = version
        return version

    def _server_error(self, response: httpx2.Response) -> str:
        text = f"HTTP {response.status_code}"
        try:
            body = response.json()
        except ValueError:
            return text
        if isinstance(body, dict):
            code, message = body.get("code"), body.get("message")
            if isinstance(code, str):
                text += f" {code}"
            if isinstance(message, str):
                text += f": {message}"
        return self._scrub(text)

    def _describe(self, exc: BaseException) -> str:
        return self._scrub(str(exc) or type(exc).__name__)

    def _scrub(self, text: str) -> str:
        """Cut to one short line; remove the token should a server or library echo it."""
        if self._secret:
            text = text.replace(self._secret, "***")
        text = " ".join(text.split())
        return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _join_revisions(bundles: Any, key: str) -> str | None:
    """One bundle: its revision; several: ``name:rev,name:rev`` sorted; none: None."""
    if not isinstance(bundles, dict):
        return None
    revisions: dict[str, str] = {
        str(name): info[key]
        for name, info in bundles.items()
        if isinstance(info, dict) and isinstance(info.get(key), str) and info[key]
    }
    if not revisions:
        return None
    if len(revisions) == 1:
        return next(iter(revisions.values()))
    return ",".join(f"{name}:{rev}" for name, rev in sorted(revisions.items()))


def _provenance_version(provenance: Any) -> str | None:
    if not isinstance(provenance, dict):
        return None
    version = _join_revisions(provenance.get("bundles"), "revision")
    legacy = provenance.get("revision")  # OPA's single-bundle (legacy) provenance field
    return version or (legacy if isinstance(legacy, str) and legacy else None)
