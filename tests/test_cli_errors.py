"""Every ``conduit`` command's error paths: one line on stderr, a non-zero exit, no traceback.

The commands are enumerated from the real argparse parser (so a new command is covered without
touching this file) and run through the installed console script (``.venv/bin/conduit``) in
three conditions:

* missing settings: an empty environment in an empty directory (no config, no sign-in);
* a bad id: signed in as an admin to a real broker (and its database for the offline
  commands), every id, name or file argument naming nothing;
* an unreachable broker: a stored sign-in for a port where nothing listens.

Arguments are made from the parser too: a choice takes its first value, a number 502, a path
one that does not exist, anything else the id ``0bad1d``.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.cli import build_parser
from broker.dev.demo import seed
from tests.harness.broker import RunningBroker
from tests.harness.cli import cli_env

CONDUIT = Path(sys.executable).with_name("conduit")
BAD_ID = "0bad1d"
TIMEOUT_S = 120
FREE_TEXT = {"reason", "description", "name", "owner_group"}  # these name nothing
# Runs that end well on purpose, with why; every other run must fail.
SUCCEEDS = {
    ("logout", "missing settings"): "signing out when not signed in has nothing to do",
}
# Values for arguments the generic rule cannot make fail without side effects.
OVERRIDES: dict[tuple[str, ...], list[str]] = {
    # `demo` needs no settings and would start servers: give it a state directory it cannot make
    ("demo",): ["--dir", "{tmp}/a-file/demo"],
}


@dataclass(frozen=True)
class Command:
    words: tuple[str, ...]
    parser: argparse.ArgumentParser

    @property
    def name(self) -> str:
        return " ".join(self.words)


def commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Iterator[Command]:
    """Every runnable command: the leaves, and parents whose sub-command is optional."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if (not subs or not subs[0].required) and words:
        yield Command(words, parser)
    for action in subs:
        for name, child in action.choices.items():
            yield from commands(child, (*words, name))


def _value(action: argparse.Action, tmp: Path, n: int) -> tuple[str, bool]:
    """An argument value, and whether it names something (an id, a name, a file)."""
    if action.choices:
        return str(next(iter(action.choices))), False
    if action.type is int:
        return "502", False
    if action.type is Path:
        return str(tmp / f"no-such-file-{n}"), True
    return BAD_ID, True


def arguments(command: Command, tmp: Path) -> tuple[list[str], bool]:
    """The command line after the command words, and whether it names anything."""
    if command.words in OVERRIDES:
        return [a.format(tmp=tmp) for a in OVERRIDES[command.words]], True
    out: list[str] = []
    names = False
    for n, action in enumerate(command.parser._actions):
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.nargs == argparse.REMAINDER or (action.option_strings and not action.required):
            continue
        value, named = _value(action, tmp, n)
        names = names or (named and action.dest not in FREE_TEXT)
        out += [action.option_strings[0], value] if action.option_strings else [value]
    return out, names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(
    argv: list[str], env: dict[str, str], cwd: Path, exe: Path = CONDUIT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(exe), *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _problems(
    condition: str, runs: list[tuple[Command, list[str], subprocess.CompletedProcess[str]]]
) -> list[str]:
    problems = []
    for command, argv, done in runs:
        what = f"[{condition}] conduit {' '.join(argv)}"
        if (command.name, condition) in SUCCEEDS:
            continue
        if done.returncode == 0:
            problems.append(f"{what}: exit 0; stdout {done.stdout[:300]!r}")
        elif "Traceback" in done.stderr + done.stdout:
            problems.append(f"{what}: traceback: {done.stderr[-600:]}")
        elif done.stderr.count("\n") != 1 or not done.stderr.endswith("\n"):
            problems.append(f"{what}: stderr is not one line: {done.stderr!r}")
        elif not done.stderr.startswith(CONDUIT.name):
            problems.append(f"{what}: stderr does not name the command: {done.stderr!r}")
        elif condition == "bad id" and not any(
            bad in done.stderr for bad in (BAD_ID, "no-such-file", "a-file")
        ):
            problems.append(f"{what}: the error does not name the bad input: {done.stderr!r}")
    return problems


def run_all(
    condition: str,
    tmp: Path,
    env: dict[str, str],
    config: Path | None,
    *,
    only_named: bool = False,
    parser: argparse.ArgumentParser | None = None,
    exe: Path = CONDUIT,
) -> list[str]:
    """Run every command under ``condition``; the problems found (empty if all is well)."""
    cwd = tmp / "cwd"
    cwd.mkdir()
    (tmp / "a-file").write_text("not a directory\n")
    jobs = []
    for i, command in enumerate(commands(parser or build_parser())):
        args, names = arguments(command, tmp)
        if only_named and not names:
            continue
        run_env = dict(env)
        if config is not None:  # each run its own copy: `logout` must not sign the others out
            home = tmp / f"config-{i}"
            shutil.copytree(config, home / "conduit")
            run_env["XDG_CONFIG_HOME"] = str(home)
        jobs.append((command, [*command.words, *args], run_env))
    assert len(jobs) >= 3, jobs
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda job: _run(job[1], job[2], cwd, exe), jobs))
    return _problems(condition, [(c, argv, d) for (c, argv, _), d in zip(jobs, done, strict=True)])


def _empty_env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def test_commands_are_enumerated_from_the_parser() -> None:
    names = {c.name for c in commands(build_parser())}
    assert {"approve", "audit verify", "sessions", "sessions kill", "lockout off"} <= names
    assert "audit" not in names  # needs a sub-command: not runnable by itself


@pytest.mark.timeout(900)  # dozens of interpreter start-ups on a shared, loaded machine
def test_every_command_with_missing_settings(tmp_path: Path) -> None:
    problems = run_all("missing settings", tmp_path, _empty_env(tmp_path), None)
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(300)
def test_every_agent_command_with_missing_settings(tmp_path: Path) -> None:
    """``conduit-agent`` likewise: no config file, a join token naming nothing."""
    from agents.cli import _parser

    env = {**_empty_env(tmp_path), "CONDUIT_AGENT_CONFIG": str(tmp_path / "no-such-file.toml")}
    exe = CONDUIT.with_name("conduit-agent")
    problems = run_all("missing settings", tmp_path, env, None, parser=_parser(), exe=exe)
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(900)
def test_every_command_with_an_unreachable_broker(broker: RunningBroker, tmp_path: Path) -> None:
    signed_in = cli_env(broker, tmp_path, "adam")
    config = Path(signed_in["XDG_CONFIG_HOME"]) / "conduit"
    creds = config / "credentials.json"
    dead = f"http://127.0.0.1:{free_port()}"
    creds.write_text(creds.read_text().replace(broker.url, dead))
    problems = run_all("unreachable broker", tmp_path, _empty_env(tmp_path), config)
    assert not problems, "\n".join(problems)
    env = {**_empty_env(tmp_path), "XDG_CONFIG_HOME": str(config.parent)}
    whoami = _run(["whoami"], env, tmp_path)
    assert whoami.stderr.startswith(
        f"conduit: cannot reach the broker at {dead}: connection refused; is `conduit serve`"
    ), whoami.stderr


@pytest.fixture
def plant(broker: RunningBroker) -> RunningBroker:
    seed(broker.services.settings.database_url)
    broker.refresh_policy_data()
    return broker


@pytest.mark.timeout(900)
def test_every_command_with_a_bad_id(plant: RunningBroker, tmp_path: Path) -> None:
    signed_in = cli_env(plant, tmp_path, "adam")
    config = Path(signed_in["XDG_CONFIG_HOME"]) / "conduit"
    settings = plant.services.settings
    env = {
        **_empty_env(tmp_path),
        "CONDUIT_DATABASE_URL": settings.database_url,
        "CONDUIT_DATA_DIR": str(settings.data_dir),
    }
    problems = run_all("bad id", tmp_path, env, config, only_named=True)
    assert not problems, "\n".join(problems)


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    argv = ["audit", "verify", "--database-url", f"sqlite:///{tmp_path}/none.db"]
    plain = _run(argv, _empty_env(tmp_path), tmp_path)
    assert plain.returncode == 2
    assert plain.stderr == (
        f"conduit: no database at {tmp_path}/none.db (from --database-url): pass --database-url "
        "URL or --config FILE (or set CONDUIT_DATABASE_URL)\n"
    )
    debug = _run(["--debug", *argv], _empty_env(tmp_path), tmp_path)
    assert debug.returncode != 0
    assert debug.stderr.startswith("Traceback") and "BrokerError" in debug.stderr


def test_error_trees_map_to_one_line() -> None:
    import sqlalchemy as sa

    from broker.cli.failures import describe, one_line
    from broker.runtime.errors import SettingsError
    from policies.errors import BundleError
    from sessions.errors import NotFoundError

    assert (
        one_line("invalid settings:\n  a is bad\n  b is bad")
        == "invalid settings: a is bad; b is bad"
    )
    assert describe(SettingsError("invalid settings:\n  x\n  y")) == ("invalid settings: x; y", 2)
    assert describe(NotFoundError("grant g-1 not found")) == ("grant g-1 not found", 2)
    bundle = BundleError("bundle does not compile", ["a.rego:3: bad", "b.rego:9: worse"])
    assert describe(bundle) == ("bundle does not compile: a.rego:3: bad; b.rego:9: worse", 2)
    assert describe(FileNotFoundError(2, "No such file or directory", "/x/y")) == (
        "cannot use /x/y: No such file or directory",
        2,
    )
    engine = sa.create_engine("sqlite://")
    with pytest.raises(sa.exc.OperationalError) as missing, engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM grants"))
    message, code = describe(missing.value)
    assert code == 2 and message.startswith(
        "the database has no Conduit tables: run `conduit db upgrade`"
    )
    assert describe(KeyboardInterrupt()) == ("interrupted", 130)
    message, code = describe(ZeroDivisionError("division by zero"))
    assert code == 70
    assert message == (
        "internal error (ZeroDivisionError: division by zero); run `conduit --debug ...` for "
        "the traceback and report it"
    )
