"""A whole SSH rig (broker, agent, sshd) in its own process, for SIGKILL-mid-session tests.

Usage: ``python -m tests.harness.ssh_broker_proc SPEC.json`` where SPEC holds ``settings``
(overrides for ``load_settings``) and ``workdir``. Prints one JSON line: the vendor's ``ssh``
argv (without the remote command), the recordings directory and the recording public key;
then waits to be killed. Run it in its own process group so the agent and sshd can be
cleaned up after the broker itself was SIGKILLed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from broker.runtime.settings import load_settings
from tests.harness.broker import start_broker
from tests.harness.ssh_session import SshRig


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    broker = start_broker(load_settings(None, **spec["settings"]))
    rig = SshRig.build(broker, Path(spec["workdir"]))
    rig.vendor("alice")
    rig.grant()
    data_dir = broker.services.settings.data_dir
    print(
        json.dumps(
            {
                "argv": rig.ssh_argv(),
                "recordings": str(data_dir / "recordings"),
                "public_key": str(data_dir / "keys" / "recording_ed25519.pub"),
                "children": [rig.sshd.process.pid, rig.agent.proc.pid],
            }
        ),
        flush=True,
    )
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
