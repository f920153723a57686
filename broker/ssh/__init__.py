"""The SSH front door: sessions, clientless approvals, TCP forwarding, front-door credentials."""
