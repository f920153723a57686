"""The security headers on every response, and the ASGI middleware that adds them."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.runtime.settings import Settings

# Forms post to the broker itself, and sign-out redirects to the IdP ({idp}).
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self' {idp}"
)
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CSP,
    "Cache-Control": "no-store",
}
# The CLI's loopback sign-in page: its consent form's answer redirects to the `conduit login`
# listener on loopback, so only that page may send a form there.
LOOPBACK_FORM_PAGES = ("/cli/authorize",)
LOOPBACK_FORM_ACTION = " http://127.0.0.1:* http://localhost:*"
# Sent when the public URL is https: browsers then refuse plain http to the broker for a year.
# No includeSubDomains: the broker does not own its parent domain's other hosts.
HSTS = "max-age=31536000"


def security_headers(settings: Settings) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The headers for every response, and the per-path replacements."""
    issuer = urlsplit(settings.oidc.issuer)
    idp_origin = f"{issuer.scheme}://{issuer.netloc}"
    headers = {k: v.replace("{idp}", idp_origin) for k, v in SECURITY_HEADERS.items()}
    if urlsplit(settings.public_url).scheme == "https":
        headers["Strict-Transport-Security"] = HSTS
    csp = headers["Content-Security-Policy"]
    loopback = {"Content-Security-Policy": csp + LOOPBACK_FORM_ACTION}
    return headers, {path: loopback for path in LOOPBACK_FORM_PAGES}


class SecurityHeaders:
    """ASGI middleware adding the security headers to every response that lacks them
    (``per_path``: different values for the responses of those exact paths)."""

    def __init__(
        self,
        app: ASGIApp,
        headers: dict[str, str],
        per_path: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.app, self.headers, self.per_path = app, headers, per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope["path"])
        static = path.startswith("/static/")
        headers = {**self.headers, **self.per_path.get(path, {})}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in headers.items():
                    if name not in out and not (static and name == "Cache-Control"):
                        out[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
