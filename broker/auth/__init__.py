"""Who is asking: web sessions, API tokens, OIDC, device sign-in starts, forwarded addresses."""
