"""An OPA-REST-compatible policy server for tests and benchmarks: regorus behind http.server.

No OPA binary can be installed here, so the OPA adapter (:mod:`policies.opa`) is tested against
this stand-in, run as its own process::

    python -m tests.harness.opa_server --bundle DIR --port N [--token T] [--data FILE.json]
                                       [--delay-ms N]

It serves the parts of OPA's REST API the broker uses, with OPA's shapes:

- ``POST /v1/data/<path>`` with ``{"input": doc}`` evaluates ``data.<path>``: ``200
  {"result": value}``, or ``200 {}`` when undefined; ``?provenance=true`` adds
  ``{"provenance": {"version", "bundles": {"conduit": {"revision"}}}}``. A body that is not
  JSON gives ``400 {"code": "invalid_parameter", "message"}``; an evaluation error (e.g. a
  complete rule with conflicting values) gives ``500 {"code": "internal_error", "message"}``.
  ``--delay-ms`` delays these answers (a slow server).
- ``GET /v1/data/<path>`` reads ``data.<path>`` without an input: ``200 {"result": value}``,
  or ``200 {}`` when undefined.
- ``PUT /v1/data/<path>`` replaces the document at ``data.<path>`` (the broker pushes
  ``data.plant``): ``204``. As with OPA's ``--bundle``, a path under one of the ``roots`` the
  bundle's ``.manifest`` declares is the bundle's: ``400 {"code": "invalid_parameter",
  "message": "path ... is owned by bundle ..."}``. Without a ``.manifest`` nothing is refused
  (as with ``opa run --server DIR``; real OPA in bundle mode would own every path).
- ``GET /health`` → ``200 {}``; ``GET /v1/status`` → ``{"result": {"bundles": {"conduit":
  {"name", "active_revision"}}}}``.
- With ``--token T`` every request (``/health`` too, as with OPA's basic authorizer and a
  deny-by-default ``system.authz``) needs ``Authorization: Bearer T``, else ``401
  {"code": "unauthorized", ...}``.

The bundle is read with :func:`policies.bundle.load_bundle`, so the revision reported is the
same content version the embedded engine stamps. A regorus engine may only be used by the
thread that created it: one worker thread owns it and runs every evaluation and data change.
:func:`start_opa_server` launches the process and waits until ``/health`` answers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hmac
import json
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

import regorus

from policies.bundle import Bundle, compile_bundle, engine_error, load_bundle
from tests.harness.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLE_NAME = "conduit"
SERVER_VERSION = "0.0.0-regorus-test"
MAX_BODY_BYTES = 8 << 20
START_TIMEOUT_S = 30.0
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _ref(path: list[str]) -> str:
    """``["conduit", "access", "x-y"]`` → ``data.conduit.access["x-y"]``."""
    return "data" + "".join(f".{p}" if _IDENT.match(p) else f"[{json.dumps(p)}]" for p in path)


class PolicyState:
    """One compiled bundle plus the current data document, owned by one thread.

    A regorus Engine is *unsendable* (pyo3): used from any thread but the one that created it,
    it panics. So a single worker thread creates, evaluates and rebuilds it; request threads
    hand it jobs and wait, which also serializes them.
    """

    def __init__(self, bundle_dir: Path, extra_data: dict[str, Any] | None = None) -> None:
        bundle = load_bundle(bundle_dir)
        self.revision = bundle.version
        self.activated = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = bundle_dir / ".manifest"
        roots = json.loads(manifest.read_text()).get("roots", [""]) if manifest.is_file() else []
        self.roots: list[list[str]] = [[p for p in str(r).split("/") if p] for r in roots]
        self._data: dict[str, Any] = copy.deepcopy(bundle.data)
        self._data.update(extra_data or {})
        self._owner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="regorus")
        self._owner.submit(self._compile, bundle).result()

    def _compile(self, bundle: Bundle) -> None:
        self._policies = compile_bundle(bundle)
        self._policies.clear_data()
        self._rebuild()

    def _rebuild(self) -> None:
        base = self._policies.clone()
        base.add_data(self._data)
        self._base = base  # never given an input: used for requests without one
        self._engine = base.clone()

    def evaluate(self, path: list[str], document: Any, has_input: bool) -> tuple[bool, Any]:
        """``(defined, value)`` of ``data.<path>``. Raises RuntimeError on evaluation errors."""
        return self._owner.submit(self._evaluate, path, document, has_input).result()

    def _evaluate(self, path: list[str], document: Any, has_input: bool) -> tuple[bool, Any]:
        ref = _ref(path)
        engine: regorus.Engine = self._engine if has_input else self._base.clone()
        if has_input:
            engine.set_input(document)
        if path and all(_IDENT.match(p) for p in path):
            try:
                value = engine.eval_rule(ref)
            except RuntimeError as exc:
                if "not a valid rule path" not in str(exc):
                    raise
            else:
                return value is not None, value
        result = engine.eval_query(ref)["result"]
        if not result:
            return False, None
        return True, result[0]["expressions"][0]["value"]

    def put(self, path: list[str], value: Any) -> None:
        """Replace ``data.<path>`` (the whole data document when ``path`` is empty)."""
        self._owner.submit(self._put, path, value).result()

    def _put(self, path: list[str], value: Any) -> None:
        if not path:
            if not isinstance(value, dict):
                raise ValueError("the root data document must be an object")
            self._data = value
        else:
            node = self._data
            for part in path[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[path[-1]] = value
        self._rebuild()


class OpaHandler(BaseHTTPRequestHandler):
    """One request; the server carries ``state``, ``token`` and ``delay_s``."""

    server: OpaServer
    protocol_version = "HTTP/1.1"  # keep-alive, as OPA
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stalls
    server_version = "opa-test"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a benchmark sends thousands of requests; errors are answered, not logged."""

    def _reply(self, status: int, body: Any = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, code: str, message: str) -> None:
        self._reply(status, {"code": code, "message": message})

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return True
        self._error(401, "unauthorized", "request rejected by administrative policy")
        return False

    def _body(self) -> tuple[bool, Any]:
        """``(present, value)`` of the JSON body; replies 400/413 and raises ValueError if bad."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._error(413, "invalid_parameter", "request body too large")
            raise ValueError("too large")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return False, None
        try:
            return True, json.loads(raw)
        except ValueError as exc:
            self._error(400, "invalid_parameter", f"body contains malformed input document: {exc}")
            raise

    def _data_path(self) -> list[str] | None:
        parts = urlsplit(self.path).path.split("/")
        if parts[1:3] != ["v1", "data"]:
            return None
        return [unquote(p) for p in parts[3:] if p]

    def do_GET(self) -> None:
        route = urlsplit(self.path).path
        if not self._authorized():
            return
        if route == "/health":
            self._reply(200, {})
        elif route == "/v1/status":
            bundles = {
                BUNDLE_NAME: {
                    "name": BUNDLE_NAME,
                    "active_revision": self.server.state.revision,
                    "last_successful_activation": self.server.state.activated,
                }
            }
            self._reply(
                200, {"result": {"bundles": bundles, "labels": {"version": SERVER_VERSION}}}
            )
        elif (path := self._data_path()) is not None:
            try:
                defined, value = self.server.state.evaluate(path, None, False)
            except (RuntimeError, ValueError, TypeError) as exc:
                self._error(500, "internal_error", f"1 error occurred: {engine_error(exc)}")
                return
            self._reply(200, {"result": value} if defined else {})
        else:
            self._error(404, "resource_not_found", f"{route} not found")

    def do_POST(self) -> None:
        path = self._data_path()
        if not self._authorized():
            return
        if path is None:
            self._error(404, "resource_not_found", f"{urlsplit(self.path).path} not found")
            return
        try:
            present, body = self._body()
        except ValueError:
            return
        if present and not isinstance(body, dict):
            self._error(400, "invalid_parameter", "body must be an object with an input key")
            return
        has_input = present and "input" in body
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        try:
            defined, value = self.server.state.evaluate(
                path, body.get("input") if has_input else None, has_input
            )
        except (RuntimeError, ValueError, TypeError) as exc:
            self._error(500, "internal_error", f"1 error occurred: {engine_error(exc)}")
            return
        answer: dict[str, Any] = {"result": value} if defined else {}
        query = parse_qs(urlsplit(self.path).query)
        if query.get("provenance", ["false"])[-1].lower() == "true":
            answer["provenance"] = {
                "version": SERVER_VERSION,
                "bundles": {BUNDLE_NAME: {"revision": self.server.state.revision}},
            }
        if not has_input:
            answer["warning"] = {
                "code": "api_usage_warning",
                "message": "'input' key missing from the request",
            }
        self._reply(200, answer)

    def do_PUT(self) -> None:
        path = self._data_path()
        if not self._authorized():
            return
        if path is None:
            self._error(404, "resource_not_found", f"{urlsplit(self.path).path} not found")
            return
        try:
            present, body = self._body()
        except ValueError:
            return
        if not present:
            self._error(400, "invalid_parameter", "body is empty")
            return
        for root in self.server.state.roots:
            if path[: len(root)] == root or root[: len(path)] == path:
                owned = "/".join(path)
                message = f'path "/{owned}" is owned by bundle "{BUNDLE_NAME}"'
                self._error(400, "invalid_parameter", message)
                return
        try:
            self.server.state.put(path, body)
        except (RuntimeError, ValueError, TypeError) as exc:
            self._error(400, "invalid_parameter", str(exc))
            return
        self._reply(204)


class OpaServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, port: int, state: PolicyState, *, token: str | None = None, delay_ms: int = 0
    ) -> None:
        super().__init__(("127.0.0.1", port), OpaHandler)
        self.state = state
        self.token = token
        self.delay_s = delay_ms / 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token")
    parser.add_argument("--data", type=Path, help="JSON object merged at the root of data")
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args(argv)
    extra = json.loads(args.data.read_text()) if args.data else None
    if extra is not None and not isinstance(extra, dict):
        parser.error("--data must hold a JSON object")
    server = OpaServer(
        args.port, PolicyState(args.bundle, extra), token=args.token, delay_ms=args.delay_ms
    )
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"opa test server on http://127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    with server:
        server.serve_forever(poll_interval=0.1)
    return 0


# --------------------------------------------------------------------------- launcher


@dataclass
class RunningOpaServer:
    """A started server process; ``stop()`` (SIGTERM) or ``kill()`` (SIGKILL) ends it."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    _log: IO[bytes] = field(repr=False)

    def logs(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def kill(self) -> None:
        """End the process abruptly (no connection is closed cleanly), as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()

    def __enter__(self) -> RunningOpaServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _healthy(url: str, token: str | None) -> bool:
    request = urllib.request.Request(f"{url}/health")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def start_opa_server(
    bundle: Path,
    *,
    token: str | None = None,
    delay_ms: int = 0,
    port: int | None = None,
    data: Path | None = None,
) -> RunningOpaServer:
    """Start ``python -m tests.harness.opa_server`` on 127.0.0.1 and wait for ``/health``.

    Raises RuntimeError (with the server's output) if it exits early or is not healthy
    within 15 s.
    """
    port = free_port() if port is None else port
    argv = [sys.executable, "-m", "tests.harness.opa_server", "--bundle", str(bundle)]
    argv += ["--port", str(port), "--delay-ms", str(delay_ms)]
    if token is not None:
        argv.append(f"--token={token}")  # a token may start with "-"
    if data is not None:
        argv += ["--data", str(data)]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - owned by RunningOpaServer
    process = subprocess.Popen(
        argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    running = RunningOpaServer(f"http://127.0.0.1:{port}", port, process, log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(running.url, token):
        if process.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(Exception):
                running.kill()
            output = running.logs()
            running.stop()
            raise RuntimeError(f"OPA test server did not start on port {port}:\n{output}")
        time.sleep(0.02)
    return running


if __name__ == "__main__":
    raise SystemExit(main())
