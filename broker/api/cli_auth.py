"""Signing the ``conduit`` CLI in: two flows that end in a short-lived bearer token.

* Loopback (RFC 8252 style): the CLI listens on 127.0.0.1, opens ``/cli/authorize`` in the
  browser with a PKCE S256 challenge; after sign-in and an explicit "allow" the broker
  redirects to the loopback URL with a one-time code, which the CLI redeems with its verifier.
* Device (RFC 8628 style, ``--no-browser``): the CLI gets a device code and a short user code,
  the person types the user code at ``/cli/activate`` in any browser, sees where and when the
  request was made and allows it; the CLI polls ``/api/cli/token`` until approved.

Against consent phishing (someone else starts a device sign-in and talks a victim into
approving it): nothing the requester sends is shown as trusted text (the client name is kept
for the audit log only); there is no ``verification_uri_complete`` and the code in a link is
ignored, so the person must type the code their own terminal shows; the confirmation page
shows the requester's address and the request's age next to the approver's own address; codes
expire after ``device_code_ttl_s`` (5 min by default); anonymous starts are limited per address
and audited in aggregate (:mod:`broker.auth.device_starts`).

Only a browser session can approve (a bearer token cannot approve another token). The token
inherits the approving session's ``amr``/``acr``/``auth_time`` and dies when that session is
signed out (:mod:`sessions.credentials`). ``POST /api/cli/logout`` revokes the calling token
and the SSH certificates it minted (``conduit logout``).

Codes are stored hashed, single use and expire after ``device_code_ttl_s``. Every step is audited.

The flows are :mod:`broker.api.cli_device`, :mod:`broker.api.cli_loopback` and
:mod:`broker.api.cli_token` (shared pieces :mod:`broker.api.cli_oauth`); this module lists
their routes for the composition root.
"""

from __future__ import annotations

from broker.api import cli_device, cli_loopback, cli_token

routes = [*cli_device.routes, *cli_token.routes, *cli_loopback.routes]
