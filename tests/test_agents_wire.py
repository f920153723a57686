"""The agent wire protocol rejects anything malformed with a machine-readable code."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import asyncssh
import pytest

from agents.wire import (
    FEATURE_EVENTS,
    MAX_BATCH,
    MAX_ENDPOINTS,
    MAX_FRAME,
    PROTOCOL_VERSION,
    ChannelEvent,
    ChannelInfo,
    Endpoint,
    Heartbeat,
    Hello,
    JoinToken,
    LineFramer,
    OpenRequest,
    Welcome,
    WireError,
    check_host,
    check_mac,
    check_port,
    decode,
    encode,
    encode_events,
    key_pin,
    open_reply,
    parse_events,
    parse_open_reply,
    response_mac,
)

PIN = "A" * 43


def hello(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "type": "hello",
        "protocol": PROTOCOL_VERSION,
        "agent_id": "ag-1",
        "version": "0.2.0",
        "hostname": "edge-01",
        "endpoints": [{"host": "10.0.0.5", "port": 502, "protocol": "modbus", "name": "plc"}],
    }
    raw.update(overrides)
    return raw


def channel(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"ref": "ch-1", "host": "10.0.0.5", "port": 502, "expires_at": 1e9}
    raw.update(overrides)
    return raw


def code_of(call: Any, *args: Any) -> str:
    with pytest.raises(WireError) as info:
        call(*args)
    return info.value.code


# --------------------------------------------------------------------------- framing


def test_frames_split_across_reads_are_reassembled() -> None:
    framer = LineFramer()
    data = encode({"type": "heartbeat", "n": 1})
    assert framer.feed(data[:5]) == []
    assert framer.pending == 5
    assert framer.feed(data[5:]) == [{"type": "heartbeat", "n": 1}]
    assert framer.pending == 0


def test_coalesced_frames_come_out_in_order_with_the_tail_kept() -> None:
    framer = LineFramer()
    data = encode({"type": "a"}) + encode({"type": "b"}) + b'{"type":'
    assert [f["type"] for f in framer.feed(data)] == ["a", "b"]
    assert framer.pending == len(b'{"type":')
    assert framer.feed(b'"c"}\n') == [{"type": "c"}]


def test_oversized_frame_without_newline_is_refused_before_the_newline_arrives() -> None:
    framer = LineFramer()
    assert framer.feed(b"x" * MAX_FRAME) == []  # at the limit: still waiting
    assert code_of(framer.feed, b"x") == "frame_too_large"


def test_oversized_frame_with_newline_is_refused() -> None:
    line = b'{"type":"x","pad":"' + b"p" * MAX_FRAME + b'"}\n'
    assert code_of(LineFramer().feed, line) == "frame_too_large"


def test_frame_at_the_limit_is_accepted_and_one_byte_more_is_not() -> None:
    def frame(size: int) -> bytes:
        body = b'{"type":"x","pad":"' + b"p" * (size - len(b'{"type":"x","pad":""}')) + b'"}'
        assert len(body) == size
        return body + b"\n"

    assert LineFramer().feed(frame(MAX_FRAME)) == [{"type": "x", "pad": "p" * (MAX_FRAME - 21)}]
    assert code_of(LineFramer().feed, frame(MAX_FRAME + 1)) == "frame_too_large"


def test_custom_limit_is_honoured() -> None:
    assert code_of(LineFramer(limit=16).feed, b"x" * 17) == "frame_too_large"


def test_encode_refuses_frames_over_the_limit() -> None:
    assert code_of(encode, {"type": "x", "pad": "p" * MAX_FRAME}) == "frame_too_large"
    assert encode({"b": 1, "type": "x"}) == b'{"b":1,"type":"x"}\n'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"{not json", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"", "not JSON"),
        (b'{"type": "x"} trailing', "not JSON"),
        (b'{"type":"x","n":' + b"9" * 5000 + b"}", "not JSON"),  # int digits limit
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # RecursionError
        (b'["type", "hello"]', "not a JSON object"),
        (b'"hello"', "not a JSON object"),
        (b"null", "not a JSON object"),
        (b"{}", "no type"),
        (b'{"type": 7}', "no type"),
        (b'{"type": null}', "no type"),
        (b'{"type": ["hello"]}', "no type"),
    ],
)
def test_decode_rejects(line: bytes, message: str) -> None:
    with pytest.raises(WireError, match=message) as info:
        decode(line)
    assert info.value.code == "malformed"


def test_bad_frame_in_a_batch_raises_from_the_framer() -> None:
    framer = LineFramer()
    with pytest.raises(WireError, match="not JSON"):
        framer.feed(encode({"type": "ok"}) + b"garbage\n")


def test_deep_nesting_inside_the_limit_is_refused_not_crashing() -> None:
    line = b'{"type":"x","v":' + b"[" * 30_000 + b"]" * 30_000 + b"}\n"
    assert len(line) < MAX_FRAME
    assert code_of(LineFramer().feed, line) == "malformed"


# --------------------------------------------------------------------------- primitives


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.0.0.5", "10.0.0.5"),
        ("PLC-3.Plant.Example", "plc-3.plant.example"),
        ("::1", "::1"),
        ("2001:DB8::0:1", "2001:db8::1"),
    ],
)
def test_check_host_normalises(value: str, expected: str) -> None:
    assert check_host(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-plc",
        "plc_3",
        "plc 3",
        "plc\n",
        "plc\nevil",
        "a" * 64,
        ".".join(["a" * 63] * 5),  # > 253 characters
        "10.0.0.5:502",
        "[::1]",
        "plc/../x",
        7,
        None,
        ["10.0.0.5"],
    ],
)
def test_check_host_rejects(value: object) -> None:
    assert code_of(check_host, value) == "malformed"


@pytest.mark.parametrize("value", [0, 65536, -1, True, False, 502.0, "502", None])
def test_check_port_rejects(value: object) -> None:
    assert code_of(check_port, value) == "malformed"


def test_check_port_accepts_the_range() -> None:
    assert [check_port(p) for p in (1, 502, 65535)] == [1, 502, 65535]


def test_endpoint_parse_and_address() -> None:
    ep = Endpoint.parse({"host": "::1", "port": 502, "protocol": "modbus", "name": "plc"})
    assert ep == Endpoint("::1", 502, "modbus", "plc")
    assert ep.address == "[::1]:502"
    assert Endpoint.parse({"host": "plc", "port": 1}).address == "plc:1"
    assert Endpoint.parse(ep.as_dict()) == ep


@pytest.mark.parametrize(
    "raw",
    [
        "plc:502",
        {"host": "plc", "port": "502"},
        {"host": "plc", "port": True},
        {"host": "plc", "port": 502, "protocol": "Modbus"},
        {"host": "plc", "port": 502, "protocol": "modbus\n"},
        {"host": "plc", "port": 502, "name": "-bad"},
        {"host": "plc", "port": 502, "name": "x" * 65},
        {"port": 502},
    ],
)
def test_endpoint_parse_rejects(raw: object) -> None:
    assert code_of(Endpoint.parse, raw) == "malformed"


# --------------------------------------------------------------------------- hello


def test_hello_round_trip() -> None:
    h = Hello(
        agent_id="ag-1",
        version="0.2.0",
        hostname="edge-01",
        endpoints=(Endpoint("10.0.0.5", 502, "modbus", "plc"),),
        kill_switch=True,
    )
    (frame,) = LineFramer().feed(h.encode())
    assert Hello.parse(frame) == h


def test_hello_deduplicates_and_sorts_endpoints_and_defaults_hostname() -> None:
    eps = [{"host": "b", "port": 2}, {"host": "a", "port": 1}, {"host": "b", "port": 2}]
    parsed = Hello.parse(hello(endpoints=eps, hostname=None))
    assert parsed.endpoints == (Endpoint("a", 1), Endpoint("b", 2))
    assert parsed.hostname == "unknown"


@pytest.mark.parametrize("value", [1, "true", 1.0, None])
def test_hello_kill_switch_must_be_literally_true(value: object) -> None:
    assert Hello.parse(hello(kill_switch=value)).kill_switch is False


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"type": "heartbeat"}, "unexpected"),
        ({"protocol": 2}, "version"),
        ({"protocol": "1"}, "version"),
        ({"protocol": True}, "version"),  # a bool is not the integer 1
        ({"protocol": 1.0}, "version"),
        ({"protocol": None}, "version"),
        ({"endpoints": None}, "malformed"),
        ({"endpoints": {"host": "plc", "port": 1}}, "malformed"),
        ({"endpoints": [{"host": "plc", "port": 70000}]}, "malformed"),
        ({"endpoints": [{"host": "plc;rm -rf", "port": 1}]}, "malformed"),
        ({"endpoints": [{"host": "plc", "port": True}]}, "malformed"),
        ({"agent_id": None}, "malformed"),
        ({"agent_id": "ag 1"}, "malformed"),
        ({"agent_id": "ag-1\n"}, "malformed"),
        ({"agent_id": "x" * 129}, "malformed"),
        ({"agent_id": ["ag-1"]}, "malformed"),
        ({"version": 2}, "malformed"),
        ({"hostname": "edge\r\nFAKE LOG LINE"}, "malformed"),
    ],
)
def test_hello_rejects(overrides: dict[str, Any], code: str) -> None:
    assert code_of(Hello.parse, hello(**overrides)) == code


def test_hello_rejects_more_endpoints_than_the_limit_even_inside_one_frame() -> None:
    eps = [{"host": "h", "port": 1 + i % 65535} for i in range(MAX_ENDPOINTS + 1)]
    line = json.dumps(hello(endpoints=eps)).encode() + b"\n"
    assert len(line) <= MAX_FRAME  # the frame limit alone would not stop it
    (frame,) = LineFramer().feed(line)
    with pytest.raises(WireError, match="at most"):
        Hello.parse(frame)
    ok = hello(endpoints=[{"host": "h", "port": p} for p in range(1, MAX_ENDPOINTS + 1)])
    assert len(Hello.parse(ok).endpoints) == MAX_ENDPOINTS


# --------------------------------------------------------------------------- heartbeat


def test_heartbeat_round_trip() -> None:
    beat = Heartbeat((ChannelInfo("ch-1", "10.0.0.5", 502, 1e9, 10, 20),), kill_switch=True)
    (frame,) = LineFramer().feed(beat.encode())
    assert Heartbeat.parse(frame) == beat
    assert Heartbeat.parse({"type": "heartbeat"}) == Heartbeat()


@pytest.mark.parametrize(
    "channels",
    [
        None,
        "ch-1",
        [channel()] * 4097,
        ["ch-1"],
        [channel(expires_at=float("nan"))],
        [channel(expires_at=float("inf"))],
        [channel(expires_at=10**400)],  # parses from JSON, too large for a float
        [channel(expires_at="soon")],
        [channel(expires_at=True)],
        [channel(expires_at=None)],
        [channel(port=True)],
        [channel(port=0)],
        [channel(host="evil host")],
        [channel(ref="")],
        [channel(ref="ch 1")],
        [channel(bytes_up=-1)],
        [channel(bytes_down=True)],
        [channel(bytes_up=1.5)],
    ],
)
def test_heartbeat_rejects(channels: object) -> None:
    assert code_of(Heartbeat.parse, {"type": "heartbeat", "channels": channels}) == "malformed"


def test_heartbeat_nan_from_the_wire_is_refused() -> None:
    # Python's json accepts NaN/Infinity literals; the message parser must not.
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1" + b"0" * 400):
        line = b'{"type":"heartbeat","channels":[{"ref":"c","host":"h","port":1,"expires_at":'
        (frame,) = LineFramer().feed(line + literal + b"}]}\n")
        assert code_of(Heartbeat.parse, frame) == "malformed", literal


# --------------------------------------------------------------------------- channel events


def test_channel_event_round_trip_and_reason_truncation() -> None:
    event = ChannelEvent("refused", "ch-1", "10.0.0.5", 502, "r" * 600)
    (frame,) = LineFramer().feed(event.encode())
    parsed = ChannelEvent.parse(frame)
    assert parsed == ChannelEvent("refused", "ch-1", "10.0.0.5", 502, "r" * 500)


def test_channel_event_coerces_unvalidated_host_and_port_for_the_audit_log() -> None:
    raw = {"type": "closed", "host": ["x"], "port": True, "reason": "done"}
    assert ChannelEvent.parse(raw) == ChannelEvent("closed", "-", "?", 0, "done")
    raw = {"type": "closed", "ref": "c", "host": "h" * 1000, "port": "1", "reason": ""}
    event = ChannelEvent.parse(raw)
    assert (len(event.host), event.port) == (253, 0)


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "opened", "reason": "x"},
        {"type": "closed"},
        {"type": "closed", "reason": 5},
        {"type": "closed", "reason": "r" * 501},
        {"type": "closed", "reason": "x", "ref": "bad ref"},
        {"type": "closed", "reason": "x", "ref": "r" * 129},
    ],
)
def test_channel_event_rejects(raw: dict[str, Any]) -> None:
    assert code_of(ChannelEvent.parse, raw) == "malformed"


# --------------------------------------------------------------------------- batched events


def test_events_round_trip_in_order_and_split_to_fit_frames() -> None:
    events = [
        ChannelEvent("closed" if i % 3 else "refused", f"ch-{i}", "10.0.0.5", 502, "r" * 400)
        for i in range(1000)
    ]
    frames = encode_events(events)
    assert len(frames) > 1 and all(len(f) <= MAX_FRAME for f in frames)
    parsed = [e for f in frames for e in parse_events(*LineFramer().feed(f))]
    assert parsed == events
    assert encode_events([]) == []


def test_a_mass_close_fits_in_a_few_frames() -> None:
    events = [ChannelEvent("closed", f"ch-{i:016x}", "10.0.0.5", 502, "closed") for i in range(256)]
    assert len(encode_events(events)) == 1


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "events"},
        {"type": "events", "events": []},
        {"type": "events", "events": "closed"},
        {"type": "events", "events": ["closed"]},
        {"type": "events", "events": [{"type": "opened", "reason": "x"}]},
        {"type": "events", "events": [{"type": "closed", "reason": 5}]},
        {"type": "events", "events": [{"type": "closed", "reason": "", "ref": "bad ref"}]},
        {"type": "events", "events": [{"type": "closed", "reason": ""}] * (MAX_BATCH + 1)},
    ],
)
def test_events_reject(raw: dict[str, Any]) -> None:
    assert code_of(parse_events, raw) == "malformed"


def test_welcome_round_trip_and_tolerance() -> None:
    (frame,) = LineFramer().feed(Welcome().encode())
    assert frame["protocol"] == PROTOCOL_VERSION
    assert FEATURE_EVENTS in Welcome.parse(frame).features
    # Features this side does not know are ignored; a broker that offers none is fine.
    future = {"type": "welcome", "features": ["events", "zstd", 7], "extra": True}
    assert Welcome.parse(future).features == frozenset({FEATURE_EVENTS})
    assert Welcome.parse({"type": "welcome"}).features == frozenset()
    assert code_of(Welcome.parse, {"type": "welcome", "features": "events"}) == "malformed"
    assert code_of(Welcome.parse, {"type": "hello"}) == "unexpected"


def test_heartbeat_with_more_channels_than_fit_lists_some_and_counts_all() -> None:
    many = tuple(ChannelInfo(f"ch-{i:016x}", "10.0.0.5", 502, 1.7e9 + i, i, i) for i in range(5000))
    line = Heartbeat(many).encode()
    assert len(line) <= MAX_FRAME
    (frame,) = LineFramer().feed(line)
    beat = Heartbeat.parse(frame)
    assert 0 < len(beat.channels) < 5000 and beat.count == 5000
    assert beat.channels == many[: len(beat.channels)]
    small = Heartbeat(many[:3])
    assert "open_channels" not in small.encode().decode() and small.count == 3


@pytest.mark.parametrize("total", [-1, 0, True, "5", 1.5, 10**8])
def test_heartbeat_rejects_a_bad_count(total: object) -> None:
    raw = {"type": "heartbeat", "channels": [channel()], "open_channels": total}
    assert code_of(Heartbeat.parse, raw) == "malformed"


# --------------------------------------------------------------------------- open request


def test_open_request_round_trip_and_generated_ref() -> None:
    request = OpenRequest("10.0.0.5", 502, 1e9)
    assert request.ref.startswith("ch-") and request.ref != OpenRequest("h", 1, 1.0).ref
    assert OpenRequest.parse_command(request.encode_command()) == request


def command(**overrides: Any) -> str:
    raw: dict[str, Any] = {"op": "open", "host": "10.0.0.5", "port": 502, "expires_at": 1e9}
    raw["ref"] = "ch-1"
    raw.update(overrides)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("text", "code"),
    [
        (command(pad="x" * 5000), "frame_too_large"),
        ("not json", "malformed"),
        ("[]", "malformed"),
        (command(op="shell"), "unexpected"),
        (json.dumps({"type": "open"}), "unexpected"),
        (command(host="plc\n"), "malformed"),
        (command(host="$(reboot)"), "malformed"),
        (command(port=True), "malformed"),
        (command(port="502"), "malformed"),
        (command(port=0), "malformed"),
        (command(expires_at=float("nan")), "malformed"),
        (command(expires_at="tomorrow"), "malformed"),
        (command(expires_at=False), "malformed"),
        (command(ref=None), "malformed"),
        (command(ref="../../x y"), "malformed"),
    ],
)
def test_open_request_rejects(text: str, code: str) -> None:
    assert code_of(OpenRequest.parse_command, text) == code


def test_open_reply_round_trip() -> None:
    assert parse_open_reply(open_reply(True).rstrip(b"\n")) == (True, "")
    assert parse_open_reply(open_reply(False, "no").rstrip(b"\n")) == (False, "no")
    assert parse_open_reply(open_reply(False, "x" * 900))[1] == "x" * 500


@pytest.mark.parametrize(
    "line",
    [b"garbage", b'{"type":"open"}', b'{"type":"open","ok":1}', b'{"type":"hello","ok":true}'],
)
def test_open_reply_rejects(line: bytes) -> None:
    assert code_of(parse_open_reply, line) == "malformed"


# --------------------------------------------------------------------------- enrolment


def test_join_token_format_parse_round_trip() -> None:
    token = JoinToken.new(PIN)
    text = str(token)
    assert text.startswith("cjt1.") and text.count(".") == 3
    assert JoinToken.parse(f"  {text}\n") == token


def test_join_token_repr_hides_the_secret() -> None:
    token = JoinToken.new(PIN)
    assert token.secret not in repr(token)
    assert token.token_id in repr(token) and "***" in repr(token)
    assert token.secret not in f"{[token]}"  # containers use repr


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cjt1",
        f"cjt2.0123456789abcdef.{'s' * 43}.{PIN}",
        f"cjt1.0123456789ABCDEF.{'s' * 43}.{PIN}",
        f"cjt1.0123456789abcde.{'s' * 43}.{PIN}",
        f"cjt1.0123456789abcdef.{'s' * 31}.{PIN}",
        f"cjt1.0123456789abcdef.{'s' * 65}.{PIN}",
        f"cjt1.0123456789abcdef.{'s+' * 20}.{PIN}",
        f"cjt1.0123456789abcdef.{'s' * 43}.{PIN[:-1]}",
        f"cjt1.0123456789abcdef.{'s' * 43}.{PIN}.extra",
        f"cjt1.0123456789abcdef.{'s' * 43}.{PIN}\nx",
    ],
)
def test_join_token_parse_rejects(text: str) -> None:
    with pytest.raises(WireError, match="join token"):
        JoinToken.parse(text)


def test_join_token_error_never_echoes_the_secret() -> None:
    secret = "S3cr3t" * 8
    with pytest.raises(WireError) as info:
        JoinToken.parse(f"cjt1.0123456789abcdef.{secret}.short")
    assert secret not in str(info.value)


def test_key_pin_is_sha256_of_the_key_blob_base64url() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode()
    expected = base64.urlsafe_b64encode(hashlib.sha256(key.public_data).digest()).rstrip(b"=")
    pin = key_pin(public)
    assert pin == expected.decode() and len(pin) == 43
    assert key_pin(public.strip() + " some comment") == pin  # comment does not matter
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    assert key_pin(other) != pin
    JoinToken.parse(f"cjt1.0123456789abcdef.{'s' * 43}.{pin}")  # a pin fits in a token


@pytest.mark.parametrize("text", ["", "ssh-ed25519", "ssh-ed25519 not*base64", "ssh-ed25519 QUJ"])
def test_key_pin_rejects(text: str) -> None:
    assert code_of(key_pin, text) == "bad_key"


def test_response_mac_is_canonical_and_keyed() -> None:
    body = {"agent_id": "ag-1", "gateways": ["a:1"], "nested": {"b": 1, "a": 2}}
    mac = response_mac("secret-1", body)
    reordered = {"nested": {"a": 2, "b": 1}, "gateways": ["a:1"], "agent_id": "ag-1"}
    assert response_mac("secret-1", reordered) == mac
    assert response_mac("secret-2", body) != mac
    assert response_mac("secret-1", {**body, "agent_id": "ag-2"}) != mac
    assert len(mac) == 64 and int(mac, 16) >= 0


def test_check_mac() -> None:
    mac = response_mac("s", {"a": 1})
    assert check_mac(mac, mac)
    assert not check_mac(mac, mac.upper())
    assert not check_mac(mac, mac[:-1])
    assert not check_mac(mac, None)
    assert not check_mac(mac, 5)
    assert not check_mac(mac, [mac])
