"""The obligations renderer: every page and the CLI show obligations as words, never reprs."""

from __future__ import annotations

from broker.http.mfa_notice import mfa_warning
from broker.http.obligations_view import duration_text, obligation_rows, obligations_text
from policies.decision import ModbusObligations, Obligations, WriteRange
from sessions.request_state import shown_state


def test_a_modbus_grant_reads_as_a_sentence() -> None:
    o = Obligations(
        max_duration_s=7200,
        idle_timeout_s=900,
        require_mfa=True,
        modbus=ModbusObligations(
            allow_function_codes=(1, 2, 3, 4, 6, 16, 8),
            write_ranges=(WriteRange("holding_registers", 10, 30, (1,)),),
            unit_ids=(1,),
        ),
        rate_limit_rps=20.0,
    ).as_dict()
    rows = dict(obligation_rows({**o, "maintenance_window_only": False}))
    assert rows["Modbus"] == (
        "read functions 1, 2, 3, 4; write functions 6, 16; other functions 8; "
        "writes to holding registers 10\u201330 (unit 1); unit ids 1; rate 20/s"
    )
    assert rows["Longest session"] == "2 h" and rows["Idle timeout"] == "15 min"
    assert rows["MFA"] == "required at connect"
    assert rows["Recording"].startswith("strict")
    assert "Maintenance windows" not in rows and "Supervision" not in rows
    text = obligations_text(o)
    for python in ("True", "False", "None", "{", "'", "allow_function_codes", "_s:"):
        assert python not in text


def test_defaults_unknown_keys_and_garbage() -> None:
    rows = dict(obligation_rows(Obligations().as_dict()))
    assert rows["Modbus"] == "no function codes allowed; no writes; any unit id"
    assert rows["MFA"] == "not required"
    assert "Longest session" not in rows  # unset (None) values are left out
    extra = dict(obligation_rows({"supervise": True, "new_rule": {"a": [1, True]}, "x": None}))
    assert extra == {
        "Supervision": "an approver watches the session",
        "New rule": '{"a": [1, true]}',
    }
    assert obligation_rows(None) == [] and obligation_rows("record") == []
    assert duration_text(5400) == "1 h 30 min" and duration_text(45) == "45 s"
    assert duration_text(0) == "0 s"


def test_shown_state_follows_the_grant() -> None:
    assert shown_state("approved", "revoked") == "revoked"
    assert shown_state("approved", "expired") == "expired"
    assert shown_state("approved", None) == "approved"
    assert shown_state("denied", None) == "denied"


def test_mfa_warning_follows_the_decisions_require_mfa() -> None:
    """The warning is the stored decision's ``require_mfa`` against the sign-in's amr; no rule
    of its own (the policy decides when MFA is needed)."""
    needs, free = Obligations(require_mfa=True).as_dict(), Obligations().as_dict()
    assert "requires MFA at connect" in (mfa_warning(["pwd"], needs) or "")
    assert "amr: none" in (mfa_warning([], needs) or "")
    assert mfa_warning(["pwd", "otp"], needs) is None
    assert mfa_warning(["pwd"], free) is None
    # filed before obligations were stored: no guess, the need is said to be unknown
    assert "not known" in (mfa_warning(["pwd"], None) or "")
    assert mfa_warning(["hwk"], None) is None


def test_modbus_rows_only_where_the_grant_reaches_modbus() -> None:
    o = Obligations(rate_limit_rps=50.0).as_dict()
    assert "Modbus" in dict(obligation_rows(o))  # unknown reach (what-if): everything
    assert "Modbus" in dict(obligation_rows(o, ["modbus", "ssh"]))
    ssh_only = dict(obligation_rows(o, ["ssh"]))
    assert "Modbus" not in ssh_only and "Rate limit" not in ssh_only
    assert "Recording" in ssh_only


def test_s7_and_enip_blocks_read_as_words_where_the_grant_reaches_them() -> None:
    o = Obligations(
        protocols={
            "s7": {
                "allow": ["read_var", "write_var"],
                "write_ranges": [{"area": "DB", "db": 1, "first": 0, "last": 15}],
            },
            "enip": {"allow": ["read_tag"]},
        }
    ).as_dict()
    rows = dict(obligation_rows(o, ["s7", "enip"]))
    assert rows["S7"] == "operations read var, write var; writes to DB1 bytes 0\u201315"
    assert rows["EtherNet/IP"] == "operations read tag"
    assert "Protocols" not in rows and "S7" not in dict(obligation_rows(o, ["ssh"]))
    assert "{" not in obligations_text(Obligations().as_dict())  # an empty block: no row
