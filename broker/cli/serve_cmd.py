"""``conduit serve``: run the broker web app with uvicorn."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from broker.cli.common import add_config_arg, settings_from


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("serve", help="run the broker")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from broker.app import create_app
    from broker.runtime import logsafe

    settings = settings_from(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # asyncssh logs every connection at INFO: thousands of agents would flood the log.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    app = create_app(settings)
    logsafe.install()
    uvicorn.run(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        log_level="info",
        proxy_headers=False,
        server_header=False,
    )
    return 0
