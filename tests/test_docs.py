"""The documentation stays true to the code.

- ``docs/reference/`` is what ``scripts/gen_api_docs.py`` generates from the docstrings now;
- the example code the how-tos include is the current text of those files (the programs
  themselves run in ``tests/test_examples.py``);
- every relative link in ``docs/`` and ``README.md`` points to an existing file (and, with
  a ``#fragment``, to an existing heading), and every page is linked from somewhere;
- the Python blocks of the hand-written pages at least compile, and the index shows the
  README's first commands unchanged.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
REGENERATE = ".venv/bin/python scripts/gen_api_docs.py"
#: Pages written with this test: their Python blocks must compile.
HAND_WRITTEN = ["index.md", "concepts.md", "howto/fastapi.md", "howto/multiple-writers.md"]
HAND_WRITTEN += ["howto/cluster.md", "howto/testing.md"]


def load_generator() -> ModuleType:
    name = "aether_gen_api_docs"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "gen_api_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- generated content ---------------------------------------------------------------------


def test_api_reference_is_up_to_date() -> None:
    stale = gen.stale_reference()
    assert not stale, (
        f"the API reference is out of date ({', '.join(rel(p) for p in stale)}): "
        f"run `{REGENERATE}` and commit docs/reference/"
    )


def test_included_examples_are_up_to_date() -> None:
    changed = gen.refreshed_docs()
    assert not changed, (
        f"{', '.join(rel(p) for p in changed)} show(s) outdated example code: "
        f"run `{REGENERATE}` (it copies the current files into the pages)"
    )


def test_every_include_names_an_existing_file_and_region() -> None:
    includes = 0
    for page in gen.doc_pages():
        for match in gen._INCLUDE.finditer(page.read_text("utf-8")):
            includes += 1
            path, region = match.group("path"), match.group("region")
            assert (ROOT / path).is_file(), f"{rel(page)} includes missing file {path}"
            assert gen.example_text(path, region).strip(), f"{rel(page)}: {path}#{region} is empty"
    assert includes >= 10  # the how-tos do include their code


def test_generation_does_not_depend_on_hash_seed() -> None:
    """Deterministic output: another process with another hash seed agrees with the files."""
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_api_docs.py"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_docstring_markup_becomes_markdown() -> None:
    index = gen.Index()
    index.add(["NatsServer"], "aether.testing.md", "`NatsServer`")
    doc = """Summary line.

    Uses :class:`~aether.testing.NatsServer` and ``code``::

        literal block

    Args:
        port: the port;
            continued here.

    Raises:
        ValueError: if bad.
    """
    text = gen.markdown(doc, index, "aether.md")
    assert "[`NatsServer`](aether.testing.md#natsserver)" in text
    assert "`code`:" in text and "``code``" not in text
    assert "```text\nliteral block\n```" in text
    assert "- `port`: the port; continued here." in text
    assert "- `ValueError`: if bad." in text


# -- links ---------------------------------------------------------------------------------

_FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)=["']([^"']+)["']""")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_HTML_ANCHOR = re.compile(r"""<a\s[^>]*?(?:id|name)=["']([^"']+)["']""")


def pages() -> list[Path]:
    return [*sorted(DOCS.rglob("*.md")), README]


def without_code(text: str) -> str:
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def links(page: Path) -> list[str]:
    text = without_code(page.read_text("utf-8"))
    return _LINK.findall(text) + _HTML_LINK.findall(text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown page (with -1, -2 for repeated headings)."""
    text = _FENCE.sub("", page.read_text("utf-8"))
    found: set[str] = set(_HTML_ANCHOR.findall(text))
    counts: dict[str, int] = {}
    for _, heading in _HEADING.findall(text):
        base = gen.slug(heading)
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def is_external(target: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None


@pytest.mark.parametrize("page", pages(), ids=lambda p: rel(p))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if is_external(target):
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no file {resolved.relative_to(ROOT)})")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment} in {rel(resolved)})")
    assert not broken, f"broken links in {rel(page)}: {broken}"


def test_every_page_is_linked() -> None:
    linked = {DOCS / "index.md"}
    for page in pages():
        for target in links(page):
            path = target.partition("#")[0]
            if path and not is_external(path):
                linked.add((page.parent / path).resolve())
    orphans = [rel(p) for p in sorted(DOCS.rglob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"pages no other page links to: {orphans}"


def test_index_links_to_every_docs_section() -> None:
    targets = {t.partition("#")[0] for t in links(DOCS / "index.md")}
    for page in ["concepts.md", "guarantees.md", "benchmarks.md", "reference/index.md"]:
        assert page in targets, f"docs/index.md does not link to {page}"
    for howto in sorted((DOCS / "howto").glob("*.md")):
        assert f"howto/{howto.name}" in targets, f"docs/index.md does not link to {howto.name}"


# -- code on the hand-written pages ----------------------------------------------------------


@pytest.mark.parametrize("name", HAND_WRITTEN)
def test_python_blocks_compile(name: str) -> None:
    text = (DOCS / name).read_text("utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)
    for n, block in enumerate(blocks, start=1):
        try:
            # Top-level await: snippets show code from inside an async function.
            compile(block, f"{name} block {n}", "exec", flags=0x2000)
        except SyntaxError as exc:
            pytest.fail(f"docs/{name}, python block {n}: {exc}")


def test_index_shows_the_readme_commands() -> None:
    readme_commands = re.search(r"```bash\n.*?```", README.read_text("utf-8"), re.DOTALL)
    assert readme_commands is not None
    assert readme_commands.group(0) in (DOCS / "index.md").read_text("utf-8"), (
        "docs/index.md must show the README's first commands unchanged"
    )
