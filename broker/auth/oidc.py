"""OpenID Connect relying party: discovery, authorization URL, code exchange, ID token checks.

Authorization code flow with PKCE S256, ``state`` and ``nonce`` (the caller keeps those per
browser, see :mod:`broker.web.signin`). The ID token is accepted only when its JWS signature
verifies against the provider's JWKS with an allowed asymmetric algorithm and ``iss``, ``aud``
(``azp``), ``exp``, ``iat``, ``nonce`` and ``sub`` all check out. Every failure raises
:class:`~broker.runtime.errors.AuthError` (a bad answer) or
:class:`~broker.runtime.errors.IdpUnavailable`
(no answer) with a specific ``code``; nothing is retried silently.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx2
from authlib.common.errors import AuthlibBaseError
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from broker.runtime.errors import AuthError, IdpUnavailable
from broker.runtime.settings import OidcSettings
from sessions.clock import Clock
from sessions.identity import Identity

DISCOVERY_TTL_S = 3600.0
JWKS_MIN_REFRESH_S = 60.0
_REQUIRED_METADATA = ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri")


def new_state() -> str:
    """A fresh unguessable value for ``state``, ``nonce`` or a browser binding."""
    return str(generate_token(43))


def new_code_verifier() -> str:
    """A PKCE code verifier (RFC 7636: 43-128 unreserved characters)."""
    return str(generate_token(64))


@dataclass(frozen=True)
class TokenSet:
    id_token: str
    access_token: str | None
    claims: Mapping[str, Any]


class OidcClient:
    """Talks to one OpenID provider. Owns an HTTP client; call :meth:`aclose` when done."""

    def __init__(
        self,
        settings: OidcSettings,
        redirect_uri: str,
        clock: Clock,
        *,
        transport: httpx2.AsyncBaseTransport | None = None,
    ) -> None:
        self._s = settings
        self._redirect_uri = redirect_uri
        self._clock = clock
        self._transport = transport
        self._http = httpx2.AsyncClient(
            timeout=settings.http_timeout_s, transport=transport, follow_redirects=False
        )
        self._oauth = self._oauth_client()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._oauth.aclose()

    def _oauth_client(self) -> AsyncOAuth2Client:
        # One client for the process: building one costs ~40 ms (TLS context). Per-sign-in
        # values (state, nonce, verifier, code) are passed per call, never stored on it.
        secret = self._s.client_secret.get_secret_value() if self._s.client_secret else None
        return AsyncOAuth2Client(
            client_id=self._s.client_id,
            client_secret=secret,
            token_endpoint_auth_method="client_secret_basic" if secret else "none",
            redirect_uri=self._redirect_uri,
            scope=" ".join(self._s.scopes),
            code_challenge_method="S256",
            timeout=self._s.http_timeout_s,
            transport=self._transport,
        )

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            resp = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx2.HTTPError as exc:
            raise IdpUnavailable(
                f"identity provider unreachable while fetching {what}: {type(exc).__name__}"
            ) from exc
        if resp.status_code != 200:
            raise IdpUnavailable(f"identity provider answered {resp.status_code} for {what}")
        try:
            data = resp.json()
        except ValueError as exc:
            raise IdpUnavailable(f"identity provider sent malformed JSON for {what}") from exc
        if not isinstance(data, dict):
            raise IdpUnavailable(f"identity provider sent a non-object for {what}")
        return data

    def _seconds(self) -> float:
        """Now on the injected clock, in seconds (the caches' ages)."""
        return self._clock.now().timestamp()

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document, cached for an hour; issuer must match exactly."""
        if self._metadata is not None and self._seconds() - self._metadata_at < DISCOVERY_TTL_S:
            return self._metadata
        url = self._s.issuer.rstrip("/") + "/.well-known/openid-configuration"
        meta = await self._get_json(url, "the discovery document")
        missing = [k for k in _REQUIRED_METADATA if not isinstance(meta.get(k), str)]
        if missing:
            raise IdpUnavailable(f"discovery document lacks {', '.join(missing)}")
        if meta["issuer"] != self._s.issuer:
            raise IdpUnavailable(
                f"discovery issuer {meta['issuer']!r} differs from configured {self._s.issuer!r}"
            )
        methods = meta.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise IdpUnavailable("identity provider does not support PKCE S256")
        self._metadata, self._metadata_at = meta, self._seconds()
        return meta

    async def _keyset(self, *, refresh: bool = False) -> KeySet:
        stale = self._seconds() - self._jwks_at > DISCOVERY_TTL_S
        can_refresh = self._seconds() - self._jwks_at > JWKS_MIN_REFRESH_S
        if self._jwks is None or stale or (refresh and can_refresh):
            meta = await self.metadata()
            data = await self._get_json(meta["jwks_uri"], "the signing keys (JWKS)")
            try:
                self._jwks = KeySet.import_key_set(data)  # type: ignore[arg-type]
            except (JoseError, ValueError, TypeError, KeyError) as exc:
                raise IdpUnavailable("identity provider published malformed signing keys") from exc
            self._jwks_at = self._seconds()
        return self._jwks

    async def authorization_url(self, *, state: str, nonce: str, code_verifier: str) -> str:
        """Where to send the browser. Raises IdpUnavailable if discovery fails."""
        meta = await self.metadata()
        url, _ = self._oauth.create_authorization_url(
            meta["authorization_endpoint"], state=state, nonce=nonce, code_verifier=code_verifier
        )
        return str(url)

    async def exchange_code(self, *, code: str, code_verifier: str, nonce: str) -> TokenSet:
        """Redeem ``code`` at the token endpoint and validate the returned ID token."""
        meta = await self.metadata()
        try:
            token = await self._oauth.fetch_token(
                meta["token_endpoint"],
                grant_type="authorization_code",
                code=code,
                code_verifier=code_verifier,
            )
        except AuthlibBaseError as exc:  # OAuth error answers (invalid_grant, ...)
            raise AuthError(
                f"the identity provider refused the authorization code ({exc.error})",
                code="token_exchange_refused",
            ) from exc
        except httpx2.HTTPError as exc:
            raise IdpUnavailable(
                f"identity provider unreachable during token exchange: {type(exc).__name__}"
            ) from exc
        except ValueError as exc:
            raise IdpUnavailable("identity provider sent a malformed token response") from exc
        id_token = token.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise AuthError("token response has no ID token", code="id_token_missing")
        claims = await self.validate_id_token(id_token, nonce=nonce)
        access = token.get("access_token")
        return TokenSet(id_token, access if isinstance(access, str) else None, claims)

    async def validate_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """Verify signature and claims of ``id_token``; return its claims."""
        try:
            header = jws.extract_compact(id_token.encode()).protected
        except (JoseError, ValueError) as exc:
            raise AuthError("ID token is not a well-formed JWS", code="id_token_malformed") from exc
        alg = header.get("alg")
        if alg not in self._s.allowed_algs:
            raise AuthError(
                f"ID token uses algorithm {alg!r}, which is not accepted",
                code="id_token_bad_alg",
            )
        keys = await self._keyset()
        kid = header.get("kid")
        if kid is not None and not any(k.kid == kid for k in keys.keys):
            keys = await self._keyset(refresh=True)  # the provider may have rotated its keys
        try:
            obj = jws.deserialize_compact(id_token, keys, algorithms=[alg])
        except JoseError as exc:
            raise AuthError(
                "ID token signature does not verify against the provider's keys",
                code="id_token_bad_signature",
            ) from exc
        try:
            claims = json.loads(obj.payload)
        except ValueError as exc:
            raise AuthError("ID token payload is not JSON", code="id_token_malformed") from exc
        if not isinstance(claims, dict):
            raise AuthError("ID token payload is not an object", code="id_token_malformed")
        self._check_claims(claims, nonce)
        return claims

    def _check_claims(self, claims: dict[str, Any], nonce: str) -> None:
        now = self._clock.now().timestamp()
        skew = self._s.clock_skew_s
        if claims.get("iss") != self._s.issuer:
            raise AuthError(
                f"ID token issuer {claims.get('iss')!r} is not the configured provider",
                code="id_token_bad_issuer",
            )
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self._s.client_id not in auds:
            raise AuthError("ID token was issued for another client", code="id_token_bad_audience")
        if len(auds) > 1 and claims.get("azp") != self._s.client_id:
            raise AuthError("ID token azp is not this client", code="id_token_bad_audience")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int | float) or not isinstance(iat, int | float):
            raise AuthError("ID token lacks exp or iat", code="id_token_malformed")
        if exp + skew < now:
            raise AuthError("ID token has expired", code="id_token_expired")
        if iat - skew > now:
            raise AuthError("ID token was issued in the future", code="id_token_not_yet_valid")
        got_nonce = claims.get("nonce")
        if not isinstance(got_nonce, str) or not hmac.compare_digest(got_nonce, nonce):
            raise AuthError("ID token nonce does not match this sign-in", code="id_token_bad_nonce")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise AuthError("ID token has no subject", code="id_token_malformed")

    async def userinfo(self, access_token: str, sub: str) -> dict[str, Any]:
        """Claims from the userinfo endpoint; ``sub`` must match the ID token's."""
        meta = await self.metadata()
        url = meta.get("userinfo_endpoint")
        if not isinstance(url, str):
            return {}
        try:
            resp = await self._http.get(url, headers={"Authorization": f"Bearer {access_token}"})
        except httpx2.HTTPError as exc:
            raise IdpUnavailable("identity provider unreachable while fetching userinfo") from exc
        if resp.status_code != 200:
            raise IdpUnavailable(f"identity provider answered {resp.status_code} for userinfo")
        try:
            info = resp.json()
        except ValueError as exc:
            raise IdpUnavailable("identity provider sent malformed userinfo") from exc
        if not isinstance(info, dict) or info.get("sub") != sub:
            raise AuthError("userinfo subject differs from the ID token", code="userinfo_mismatch")
        return info

    async def end_session_url(self, *, id_token_hint: str | None, post_logout: str) -> str | None:
        """RP-initiated logout URL, or None if the provider has no end-session endpoint."""
        try:
            meta = await self.metadata()
        except IdpUnavailable:
            return None
        endpoint = meta.get("end_session_endpoint")
        if not isinstance(endpoint, str) or not urlsplit(endpoint).scheme:
            return None
        params = {"post_logout_redirect_uri": post_logout, "client_id": self._s.client_id}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        return f"{endpoint}?{urlencode(params)}"

    def identity(self, claims: Mapping[str, Any]) -> Identity:
        """Map validated claims to an :class:`Identity` (groups missing => no groups)."""
        groups = claims.get(self._s.groups_claim)
        group_list = tuple(str(g) for g in groups) if isinstance(groups, list) else ()
        org = claims.get(self._s.vendor_org_claim)
        amr = claims.get("amr")
        return Identity(
            issuer=self._s.issuer,
            sub=str(claims["sub"]),
            email=claims.get("email") if isinstance(claims.get("email"), str) else None,
            name=claims.get("name") if isinstance(claims.get("name"), str) else None,
            groups=group_list,
            vendor_org=org if isinstance(org, str) and org else None,
            amr=tuple(str(a) for a in amr) if isinstance(amr, list) else (),
            acr=claims.get("acr") if isinstance(claims.get("acr"), str) else None,
        )
