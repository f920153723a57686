"""``python -m broker`` is the ``conduit`` command."""

from broker.cli import main

raise SystemExit(main())
