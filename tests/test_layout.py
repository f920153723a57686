"""The code layout matches its description.

docs/architecture.md names modules by path (``broker/web/pages.py``, ``sessions/access.py``);
each must exist, as a module file or as a package of that name (``x.py`` or ``x/__init__.py``),
so the document cannot drift from a move. Size limits are tests/test_code_size.py.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
MODULE_PATH = re.compile(r"(?<![\w/.-])((?:broker|sessions)/[\w/]+\.py)\b")
# Named on purpose though not written: the "Adding a fourth protocol" walk-through.
WALK_THROUGH = {"sessions/ot/dnp3.py"}


def _named_paths() -> list[str]:
    return sorted(set(MODULE_PATH.findall(ARCHITECTURE.read_text(encoding="utf-8"))))


def test_architecture_names_modules_by_path() -> None:
    named = _named_paths()
    # The broker table alone names every broker sub-package's modules.
    assert len([p for p in named if p.startswith("broker/")]) > 50, named


def test_every_module_path_in_architecture_exists() -> None:
    missing = [
        p
        for p in _named_paths()
        if p not in WALK_THROUGH
        and not (ROOT / p).is_file()
        and not (ROOT / p.removesuffix(".py") / "__init__.py").is_file()
    ]
    assert not missing, f"docs/architecture.md names modules that do not exist: {missing}"


def test_every_broker_module_is_in_the_architecture_table() -> None:
    named = set(_named_paths())
    modules = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "broker").rglob("*.py")
        if "cli" not in p.relative_to(ROOT / "broker").parts[:1]
        and p.name != "__init__.py"
        and "node_modules" not in p.parts
    }
    assert not modules - named, (
        f"broker modules missing from docs/architecture.md: {modules - named}"
    )
