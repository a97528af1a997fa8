"""The ``aether`` command line is a client of aether's public API only.

No module in ``src/aether/cli`` imports a private aether module (``aether.store._*``,
``aether._json``, ``aether.testing._*``, ...: any module path with a part starting with
``_`` outside ``aether.cli`` itself), and none knows JetStream's error codes: streams
are administered through :mod:`aether.admin`, events read and written through the
store (``tail`` through its ``subscribe``), and errors arrive as aether's exceptions.
No command opens a nats-py JetStream context of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parent.parent / "src" / "aether" / "cli"
MODULES = sorted(CLI.glob("*.py"))
#: JetStream API error codes (``err_code``) are 10000 and up.
JS_ERR_CODES = range(10_000, 11_000)


def _private(module: str) -> bool:
    parts = module.split(".")
    if parts[0] != "aether" or parts[:2] == ["aether", "cli"]:
        return False
    # ``__version__`` and other dunders are public.
    return any(part.startswith("_") and not part.endswith("__") for part in parts[1:])


def imported_modules(tree: ast.AST) -> list[str]:
    """Every absolute module (and ``from aether import _x`` name) a module imports."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def test_there_are_modules_to_check() -> None:
    assert {"_app.py", "tail.py", "stream.py", "streams.py"} <= {m.name for m in MODULES}


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_no_private_aether_module_is_imported(module: Path) -> None:
    tree = ast.parse(module.read_text("utf-8"), str(module))
    private = sorted({name for name in imported_modules(tree) if _private(name)})
    assert private == [], f"{module.name} imports private aether modules: {private}"


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_no_jetstream_error_codes(module: Path) -> None:
    tree = ast.parse(module.read_text("utf-8"), str(module))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            assert node.attr != "err_code", f"{module.name}:{node.lineno} reads err_code"
        if isinstance(node, ast.Constant) and type(node.value) is int:
            assert node.value not in JS_ERR_CODES, f"{module.name}:{node.lineno}: {node.value}"


@pytest.mark.parametrize("module", MODULES, ids=lambda path: path.name)
def test_no_command_uses_a_jetstream_context_of_its_own(module: Path) -> None:
    text = module.read_text("utf-8")
    assert "jetstream()" not in text and "nats.js" not in text, module.name


@pytest.mark.parametrize(
    ("module", "private"),
    [
        ("aether.store._jsapi", True),
        ("aether._json", True),
        ("aether.testing._server", True),
        ("aether.store._subjects.encode_actor_id", True),
        ("aether.store.JetStreamEventStore", False),
        ("aether.admin.StreamAdmin", False),
        ("aether.cli._errors", False),
        ("aether.__version__", False),
        ("nats.js._x", False),
    ],
)
def test_the_scan_tells_private_from_public(module: str, private: bool) -> None:
    assert _private(module) is private
    tree = ast.parse("from aether import _json\nimport aether.store._jsapi as j\n")
    assert sorted(name for name in imported_modules(tree) if _private(name)) == [
        "aether._json",
        "aether.store._jsapi",
    ]
