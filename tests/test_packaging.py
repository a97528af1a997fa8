"""The package as users install it: its name, its extras, what it ships and what it imports."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import aether
from aether.cli import CLI_EXTRA_HINT

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DIST_NAME = PYPROJECT["project"]["name"]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )


def test_python_dash_m_aether_is_the_command_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aether", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"aether, version {aether.__version__}"


def test_without_the_cli_extra_the_command_says_what_to_install() -> None:
    # click missing as if the extra were not installed (None in sys.modules: ImportError).
    done = run_python(
        "import sys; sys.modules['click'] = None; sys.argv = ['aether', 'streams'];"
        "from aether.cli import main; main()"
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"Error: the aether command line needs the 'cli' extra (click is not installed): "
        f"{CLI_EXTRA_HINT}"
    )
    assert f"'{DIST_NAME}[cli]'" in CLI_EXTRA_HINT


def test_the_library_imports_no_cli_or_test_dependency() -> None:
    done = run_python(
        "import sys, aether, aether.store, aether.admin, aether.testing\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'click', 'rich', 'pytest', 'hypothesis', 'matplotlib'}))"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_library_dependencies_are_only_the_client_and_json() -> None:
    required = {re.split(r"[<>=\[ ]", d)[0] for d in PYPROJECT["project"]["dependencies"]}
    assert required == {"nats-py", "orjson"}
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {"click", "rich"} <= {re.split(r"[<>=\[ ]", d)[0] for d in extras["cli"]}
    # README command 1 installs the server extra and runs the demo: it must bring the CLI.
    assert f"{DIST_NAME}[cli]" in extras["server"]


# Where users read install hints: every one must name the real distribution.
HINT_FILES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
    *sorted((ROOT / "src").rglob("*.py")),
    *sorted((ROOT / "examples").rglob("*.py")),
    *sorted((ROOT / "benchmarks").glob("*.md")),
]


@pytest.mark.parametrize("path", HINT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_install_hints_use_the_distribution_name(path: Path) -> None:
    # `aether[server]` (the import name with an extra) is another project on the index.
    wrong = re.findall(r"(?<![\w.-])aether\[[a-z,]+\]", path.read_text())
    assert wrong == [], f"{path.name}: use {DIST_NAME}[...] or -e '.[...]'"


def test_the_license_and_changelog_ship_with_the_source() -> None:
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert f"`{DIST_NAME}`" in (ROOT / "CHANGELOG.md").read_text()


@pytest.mark.slow
def test_the_wheel_holds_the_library_and_nothing_of_the_checkout(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {"aether"} <= top
    assert not {"benchmarks", "tests", "examples", "docs"} & top
    assert not [n for n in names if "_bench" in n]
    for module in ("py.typed", "__main__.py", "admin.py", "testing/contract.py"):
        assert f"aether/{module}" in names
    (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read(metadata_name).decode())
    assert metadata["Name"] == DIST_NAME
    assert any(n.endswith("LICENSE") for n in names)
    requires = metadata.get_all("Requires-Dist") or []
    click = [r for r in requires if r.startswith("click")]
    assert click and all('extra == "cli"' in r for r in click)
