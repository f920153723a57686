"""``python -m agents`` is the ``conduit-agent`` command."""

from agents.cli import main

raise SystemExit(main())
