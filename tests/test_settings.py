"""Settings are validated once; invalid or insecure ones stop the broker with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from broker.runtime.errors import SettingsError
from broker.runtime.settings import load_settings

REPO = Path(__file__).resolve().parents[1]
GOOD_ISSUER = "https://idp.plant.example"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CONDUIT_"):
            monkeypatch.delenv(key)


def test_dev_defaults_with_loopback_issuer() -> None:
    s = load_settings(None, oidc={"issuer": "http://127.0.0.1:9000"})
    assert s.mode == "dev" and s.database_url.startswith("sqlite:///")
    assert s.roles.as_mapping()["vendor"] == ["conduit-vendors"]
    assert not s.secure_cookies


def test_prod_needs_a_session_secret() -> None:
    with pytest.raises(SettingsError, match="session_secret must be set"):
        load_settings(
            None,
            mode="prod",
            public_url="https://c.example",
            oidc={"issuer": GOOD_ISSUER, "client_secret": "x"},
        )


def test_prod_refuses_http_issuer_and_public_url() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(
            None,
            mode="prod",
            public_url="http://c.example",
            session_secret="s" * 40,
            oidc={"issuer": "http://idp.example", "client_secret": "x"},
        )
    assert "oidc.issuer must use https" in str(err.value)
    assert "public_url must use https" in str(err.value)


def test_prod_secret_is_not_printed_in_errors() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(
            None,
            mode="prod",
            public_url="https://c.example",
            session_secret="short-secret",
            oidc={"issuer": GOOD_ISSUER, "client_secret": "x"},
        )
    assert "short-secret" not in str(err.value)


def test_prod_valid() -> None:
    s = load_settings(
        None,
        mode="prod",
        public_url="https://c.example",
        session_secret="s" * 40,
        oidc={"issuer": GOOD_ISSUER, "client_secret": "x"},
    )
    assert s.secure_cookies and "ssss" not in repr(s)


def test_dev_refuses_http_issuer_off_loopback() -> None:
    with pytest.raises(SettingsError, match="only accepted on a loopback"):
        load_settings(None, oidc={"issuer": "http://idp.example"})


def test_missing_issuer_and_unknown_key_are_both_reported() -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(None, listen_prot=80)
    assert "listen_prot" in str(err.value)


def test_symmetric_or_none_algorithms_are_refused() -> None:
    with pytest.raises(SettingsError, match="asymmetric"):
        load_settings(None, oidc={"issuer": GOOD_ISSUER, "allowed_algs": ["RS256", "none"]})


def test_file_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "conduit.toml"
    cfg.write_text(
        'listen_port = 9001\n[oidc]\nissuer = "https://file.example"\n'
        '[roles]\nadmin = ["plant-admins"]\n'
    )
    monkeypatch.setenv("CONDUIT_OIDC__ISSUER", "https://env.example")
    s = load_settings(cfg)
    assert s.listen_port == 9001
    assert s.oidc.issuer == "https://env.example"
    assert s.roles.admin == ["plant-admins"]


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("listen_port = = 3\n")
    with pytest.raises(SettingsError, match=r"broken\.toml is not valid TOML"):
        load_settings(cfg)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_serve_refuses_to_start_on_insecure_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    env.update(
        {
            "CONDUIT_MODE": "prod",
            "CONDUIT_OIDC__ISSUER": "http://idp.example",
            "CONDUIT_PUBLIC_URL": "https://c.example",
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "broker", "serve"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid settings" in done.stderr and "session_secret" in done.stderr
    assert "Traceback" not in done.stderr
