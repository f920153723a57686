"""Demo and development tools (demo plant, PLC, dev IdP, local sshd).

Not used by the running broker; ``conduit demo`` and the test harness start them.
"""
