"""OpaEngine against a real OPA-REST server process (tests/harness/opa_server.py, regorus).

The bundle is written into a temporary directory by the tests, so these tests depend neither
on the default bundle nor on an OPA binary.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import pytest

import policies
from policies.bundle import load_bundle
from policies.decision import input_hash
from policies.embedded import EmbeddedEngine
from policies.errors import PolicyError
from policies.opa import OpaEngine
from tests.harness.opa_server import RunningOpaServer, start_opa_server
from tests.harness.ports import free_port

DEFAULT_BUNDLE = Path(policies.__file__).parent / "bundle"

POLICY = """\
package conduit.access

import rego.v1

default allow := false

allow if {
	input.user.sub in data.plant.vendors
	input.action.operation_class == "read_only"
}

decision := {"allow": allow, "reasons": reasons, "obligations": obligations}

reasons := ["listed vendor, read-only"] if allow

reasons := ["not a listed vendor or not read-only"] if not allow

obligations := {
	"record": "strict",
	"max_duration_s": 7200,
	"require_mfa": true,
	"modbus": {"allow_function_codes": [4, 3, 1], "write_ranges": []},
}

# defined only when the input asks for it: undefined otherwise
maybe := decision if input.context.defined

wrong_type := "allow"

conflict := 1 if input.user

conflict := 2 if input.user
"""

ALICE_READ: dict[str, Any] = {
    "user": {"sub": "alice", "email": "alice@vendor.example", "groups": ["vendor"]},
    "asset": {"name": "press-3-plc", "zone": "cell-3", "purdue_level": 1},
    "action": {"kind": "tcp", "port": 502, "operation_class": "read_only"},
    "context": {"now": "2025-01-01T10:00:00Z", "agent_online": True},
}
BOB_READ: dict[str, Any] = {**ALICE_READ, "user": {"sub": "bob", "groups": ["vendor"]}}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    (root / "conduit" / "access").mkdir(parents=True)
    (root / "conduit" / "access" / "decision.rego").write_text(POLICY)
    (root / "data.json").write_text('{"plant": {"vendors": ["alice"]}}')
    return root


@pytest.fixture(scope="module")
def server(bundle: Path) -> Iterator[RunningOpaServer]:
    with start_opa_server(bundle) as running:
        yield running


@pytest.fixture
async def engine(server: RunningOpaServer) -> AsyncIterator[OpaEngine]:
    opa = OpaEngine(server.url, timeout_s=5)  # only the timeout tests need a tight bound
    yield opa
    await opa.aclose()


async def test_allow_comes_through_with_obligations(engine: OpaEngine, bundle: Path) -> None:
    decision = await engine.decide(ALICE_READ)
    assert decision.allow is True
    assert decision.reasons == ("listed vendor, read-only",)
    assert decision.obligations.max_duration_s == 7200
    assert decision.obligations.require_mfa is True
    assert decision.obligations.modbus.allow_function_codes == (1, 3, 4)
    assert decision.engine == "opa"
    assert decision.bundle_version == load_bundle(bundle).version
    assert decision.input_hash == input_hash(ALICE_READ)
    assert decision.elapsed_ms > 0


async def test_deny_comes_through_with_reasons(engine: OpaEngine) -> None:
    decision = await engine.decide(BOB_READ)
    assert decision.allow is False
    assert decision.reasons == ("not a listed vendor or not read-only",)
    assert decision.obligations.record == "strict"
    write = {**ALICE_READ, "action": {**ALICE_READ["action"], "operation_class": "program"}}
    assert (await engine.decide(write)).allow is False


async def test_same_answer_as_the_embedded_engine(engine: OpaEngine, bundle: Path) -> None:
    embedded = EmbeddedEngine.from_directory(bundle)
    for document in (ALICE_READ, BOB_READ):
        remote, local = await engine.decide(document), embedded.decide_sync(document)
        assert remote.as_dict() | {"engine": ""} == local.as_dict() | {"engine": ""}


async def test_concurrent_decisions(server: RunningOpaServer) -> None:
    # A generous timeout: this checks correctness under concurrency, not speed (CI is shared).
    opa = OpaEngine(server.url, timeout_s=10)
    try:
        decisions = await asyncio.gather(*(opa.decide(ALICE_READ) for _ in range(20)))
    finally:
        await opa.aclose()
    assert all(d.allow for d in decisions), [d.reasons for d in decisions if not d.allow]


async def test_pushed_data_is_used(bundle: Path) -> None:
    with start_opa_server(bundle) as running:
        opa = OpaEngine(running.url)
        try:
            assert (await opa.decide(BOB_READ)).allow is False
            async with httpx2.AsyncClient() as client:
                reply = await client.put(f"{running.url}/v1/data/plant", json={"vendors": ["bob"]})
            assert reply.status_code == 204
            assert (await opa.decide(BOB_READ)).allow is True
            assert (await opa.decide(ALICE_READ)).allow is False
        finally:
            await opa.aclose()


async def test_push_data_writes_the_document_with_the_token(bundle: Path) -> None:
    right, wrong = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    with start_opa_server(bundle, token=right) as running:
        good, bad = OpaEngine(running.url, token=right), OpaEngine(running.url, token=wrong)
        try:
            assert (await good.decide(BOB_READ)).allow is False
            await good.push_data({"plant": {"vendors": ["bob"]}})
            async with httpx2.AsyncClient() as client:
                stored = await client.get(
                    f"{running.url}/v1/data/plant", headers={"Authorization": f"Bearer {right}"}
                )
            assert stored.json() == {"result": {"vendors": ["bob"]}}
            assert (await good.decide(BOB_READ)).allow is True
            with pytest.raises(PolicyError) as refused:
                await bad.push_data({"plant": {"vendors": []}})
        finally:
            await good.aclose()
            await bad.aclose()
    assert refused.value.code == "opa_data_push"
    assert refused.value.message.startswith(
        "pushing data.plant failed: policy server rejected the data: HTTP 401 unauthorized"
    )
    assert right not in refused.value.message and wrong not in refused.value.message


async def test_default_bundle_owns_only_its_root() -> None:
    """The default bundle's .manifest claims ``conduit``: OPA in bundle mode accepts the plant
    data next to it and refuses writes into the policy."""
    with start_opa_server(DEFAULT_BUNDLE) as running:
        opa = OpaEngine(running.url)
        try:
            await opa.push_data({"plant": {"lockout": {"vendors": False, "reason": ""}}})
            with pytest.raises(PolicyError) as owned:
                await opa.push_data({"conduit": {}})
        finally:
            await opa.aclose()
    assert 'path "/conduit" is owned by bundle "conduit"' in owned.value.message


class _FlakyDataApi(ThreadingHTTPServer):
    """Answers the first ``failures`` PUTs with 503, then 204; keeps what it was sent."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.seen: list[tuple[str, str | None, bytes]] = []
        super().__init__(("127.0.0.1", 0), _FlakyHandler)


class _FlakyHandler(BaseHTTPRequestHandler):
    server: _FlakyDataApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.path, self.headers.get("Authorization"), body))
        failing = len(self.server.seen) <= self.server.failures
        payload = b'{"code": "internal_error", "message": "storage busy"}' if failing else b""
        self.send_response(503 if failing else 204)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.mark.parametrize(("failures", "ok"), [(1, True), (2, False)])
async def test_push_data_retries_server_errors(failures: int, ok: bool) -> None:
    api = _FlakyDataApi(failures)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    opa = OpaEngine(f"http://127.0.0.1:{api.server_address[1]}", token="t0k", retries=1)
    try:
        if ok:
            await opa.push_data({"plant": {"lockout": {"vendors": True}}})
        else:
            with pytest.raises(PolicyError) as failed:
                await opa.push_data({"plant": {"lockout": {"vendors": True}}})
            assert "HTTP 503 internal_error: storage busy" in failed.value.message
            assert "2 attempts" in failed.value.message
    finally:
        await opa.aclose()
        api.shutdown()
        api.server_close()
    body = b'{"lockout":{"vendors":true}}'
    assert api.seen == [("/v1/data/plant", "Bearer t0k", body)] * 2  # retried once, no more


async def test_push_data_to_a_down_server_fails() -> None:
    opa = OpaEngine(f"http://127.0.0.1:{free_port()}", retries=1)
    try:
        with pytest.raises(PolicyError) as failed:
            await opa.push_data({"plant": {}})
        with pytest.raises(PolicyError, match="not an identifier"):
            await opa.push_data({"../x": {}})
    finally:
        await opa.aclose()
    assert failed.value.message.startswith("pushing data.plant failed: policy server unreachable")
    assert "2 attempts" in failed.value.message
    with pytest.raises(PolicyError, match="closed"):
        await opa.push_data({"plant": {}})


async def test_server_never_started_is_a_deny() -> None:
    opa = OpaEngine(f"http://127.0.0.1:{free_port()}", retries=1)
    try:
        decision = await opa.decide(ALICE_READ)
    finally:
        await opa.aclose()
    assert decision.allow is False
    assert decision.reasons[0].startswith("policy server unreachable: ")
    assert "2 attempts" in decision.reasons[0]
    assert decision.engine == "opa"
    assert decision.bundle_version is None
    assert decision.input_hash == input_hash(ALICE_READ)


async def test_server_killed_mid_test_is_a_deny(bundle: Path) -> None:
    running = start_opa_server(bundle)
    opa = OpaEngine(running.url)
    try:
        assert (await opa.decide(ALICE_READ)).allow is True  # a pooled keep-alive connection
        running.kill()
        decision = await opa.decide(ALICE_READ)
        assert decision.allow is False
        assert "unreachable" in decision.reasons[0]
        assert await opa.healthy() is False
    finally:
        await opa.aclose()
        running.stop()


async def test_slow_server_times_out_to_a_deny(bundle: Path) -> None:
    with start_opa_server(bundle, delay_ms=1500) as running:
        opa = OpaEngine(running.url, timeout_s=0.2, retries=1)
        try:
            start = time.monotonic()
            decision = await opa.decide(ALICE_READ)
            took = time.monotonic() - start
        finally:
            await opa.aclose()
    # The client's timeout fired (the server would have allowed after 1.5 s), on both attempts:
    # lower bounds only, a loaded machine may well take longer.
    assert decision.allow is False
    assert decision.reasons[0].startswith("policy server timed out after 200 ms")
    assert took >= 0.4 and decision.elapsed_ms >= 400  # two bounded attempts + 50 ms backoff


async def test_wrong_token_is_a_deny_and_never_shown(bundle: Path) -> None:
    right, wrong = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    with start_opa_server(bundle, token=right) as running:
        engines = [OpaEngine(running.url, token=t) for t in (wrong, None, right)]
        try:
            bad, missing, good = [await e.decide(ALICE_READ) for e in engines]
            assert [await e.healthy() for e in engines] == [False, False, True]
        finally:
            for e in engines:
                await e.aclose()
    for decision in (bad, missing):
        assert decision.allow is False
        assert decision.reasons[0].startswith("policy server rejected the query: HTTP 401")
        assert "unauthorized" in decision.reasons[0]
    assert good.allow is True
    everything = repr(engines) + repr([bad, missing, good])
    assert right not in everything
    assert wrong not in everything


async def test_undefined_decision_is_a_deny(server: RunningOpaServer, bundle: Path) -> None:
    opa = OpaEngine(server.url, query="data.conduit.access.maybe")
    try:
        undefined = await opa.decide(ALICE_READ)
        defined = await opa.decide({**ALICE_READ, "context": {"defined": True}})
    finally:
        await opa.aclose()
    assert undefined.allow is False
    assert undefined.reasons == ("policy returned no decision (undefined)",)
    assert undefined.bundle_version == load_bundle(bundle).version
    assert defined.allow is True


async def test_wrong_type_decision_is_a_malformed_deny(server: RunningOpaServer) -> None:
    opa = OpaEngine(server.url, query="data.conduit.access.wrong_type")
    try:
        decision = await opa.decide(ALICE_READ)
    finally:
        await opa.aclose()
    assert decision.allow is False
    assert decision.reasons[0].startswith("policy returned a malformed decision")


async def test_evaluation_error_is_a_5xx_deny(server: RunningOpaServer) -> None:
    opa = OpaEngine(server.url, query="data.conduit.access.conflict", retries=2)
    try:
        decision = await opa.decide(ALICE_READ)
    finally:
        await opa.aclose()
    assert decision.allow is False
    assert decision.reasons[0].startswith("policy server error: HTTP 500 internal_error: ")
    assert "3 attempts" in decision.reasons[0]


async def test_server_started_after_a_failure_is_used_next(bundle: Path) -> None:
    port = free_port()
    opa = OpaEngine(f"http://127.0.0.1:{port}", retries=0)
    try:
        first = await opa.decide(ALICE_READ)
        assert first.allow is False
        assert "unreachable" in first.reasons[0]
        assert await opa.healthy() is False
        with start_opa_server(bundle, port=port):
            assert await opa.healthy() is True
            assert (await opa.decide(ALICE_READ)).allow is True
    finally:
        await opa.aclose()


async def test_input_hash_is_stamped_and_stable(engine: OpaEngine) -> None:
    reordered = {key: ALICE_READ[key] for key in reversed(list(ALICE_READ))}
    one, two = await engine.decide(ALICE_READ), await engine.decide(reordered)
    assert one.input_hash == two.input_hash == input_hash(ALICE_READ)
    assert len(one.input_hash) == 64
    assert (await engine.decide(BOB_READ)).input_hash != one.input_hash


async def test_input_that_is_not_json_is_a_deny(engine: OpaEngine) -> None:
    decision = await engine.decide({"user": {"sub": float("nan")}})
    assert decision.allow is False
    assert "not a JSON document" in decision.reasons[0]


async def test_closed_engine_denies(server: RunningOpaServer) -> None:
    opa = OpaEngine(server.url)
    await opa.aclose()
    await opa.aclose()
    decision = await opa.decide(ALICE_READ)
    assert decision.allow is False
    assert decision.reasons == ("policy engine is closed",)
    assert await opa.healthy() is False


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("127.0.0.1:8181", {}),
        ("ftp://opa:8181", {}),
        ("http://user:pw@opa:8181", {}),
        ("http://opa:8181", {"ca_file": Path("/nonexistent-ca.pem")}),
        ("https://opa:8181", {"ca_file": Path("/nonexistent-ca.pem")}),
        ("http://opa:8181", {"timeout_s": 0}),
        ("http://opa:8181", {"retries": -1}),
        ("http://opa:8181", {"query": "conduit.access.decision"}),
    ],
)
def test_bad_configuration_is_refused(url: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(PolicyError) as raised:
        OpaEngine(url, **kwargs)
    assert raised.value.code == "opa_config"
