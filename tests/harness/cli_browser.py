"""A stand-in for the vendor's web browser, used as $BROWSER by the CLI loopback login test.

Given the URL ``conduit login`` opens, it signs in through the real IdP with the credentials in
CONDUIT_TEST_USER / CONDUIT_TEST_PASSWORD (and the one-time code in CONDUIT_TEST_OTP, if
set), clicks "Allow" (or "Deny" if CONDUIT_TEST_DECISION
says so) on the broker's consent page and follows the redirect to the CLI's loopback listener.
"""

from __future__ import annotations

import os
import sys

import httpx2

from tests.harness.broker import form_values
from tests.harness.idp import idp_login


def main(url: str) -> int:
    with httpx2.Client(timeout=30.0) as client:
        to_login = client.get(url)  # not signed in at the broker yet: 303 to /login
        to_idp = client.get(httpx2.URL(url).join(to_login.headers["location"]))
        answer = idp_login(
            client,
            to_idp.headers["location"],
            os.environ["CONDUIT_TEST_USER"],
            os.environ["CONDUIT_TEST_PASSWORD"],
            otp=os.environ.get("CONDUIT_TEST_OTP"),
        )
        resp = client.get(answer.headers["location"])  # broker callback -> back to /cli/authorize
        page = client.get(httpx2.URL(url).join(resp.headers["location"]))
        fields = form_values(page.text)
        decision = os.environ.get("CONDUIT_TEST_DECISION", "approve")
        done = client.post(
            httpx2.URL(url).join("/cli/authorize"), data={**fields, "decision": decision}
        )
        assert done.status_code == 303, done.text
        client.get(done.headers["location"])  # the CLI's loopback listener
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
