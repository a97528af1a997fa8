"""The documentation stays true to the code.

- ``mkdocs build --strict`` succeeds: the API reference renders from the docstrings
  (mkdocstrings), every page is in the nav, every link, anchor and cross-reference of the
  site resolves, and every ``--8<--`` include finds its file and region;
- every ``--8<--`` include names an existing file, and a region that file marks with
  ``# --8<-- [start:name]`` / ``# --8<-- [end:name]`` (the programs themselves run in
  ``tests/test_examples.py``), and no page keeps a copy under the retired
  ``<!-- include: -->`` marker;
- every relative link in ``docs/`` and ``README.md`` points to an existing file (and, with
  a ``#fragment``, to an existing heading, or to an object the reference page documents),
  as GitHub shows them, and every page is linked from somewhere;
- the Python blocks of the hand-written pages, includes expanded, at least compile, and
  the index shows the README's first commands unchanged.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
README = ROOT / "README.md"
#: Pages written by hand: their Python blocks must compile.
HAND_WRITTEN = ["index.md", "concepts.md", "howto/fastapi.md", "howto/multiple-writers.md"]
HAND_WRITTEN += ["howto/cluster.md", "howto/testing.md", "howto/event-bus.md"]
HAND_WRITTEN += ["howto/read-side.md", "howto/placement.md"]
HAND_WRITTEN += ["howto/eventsourcing.md"]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def pages() -> list[Path]:
    return [*sorted(DOCS.rglob("*.md")), README]


# -- the site ------------------------------------------------------------------------------


def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    """The site builds with every warning an error (the CI build)."""
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The reference is rendered from the docstrings, the how-tos include the examples.
    reference = (site / "reference" / "aether.store" / "index.html").read_text("utf-8")
    assert 'id="aether.store.JetStreamEventStore.save_event"' in reference
    assert ":class:`" not in reference and ":meth:`" not in reference  # roles were rewritten
    fastapi = (site / "howto" / "fastapi" / "index.html").read_text("utf-8")
    assert "SNAPSHOT_EVERY" in fastapi and "--8&lt;--" not in fastapi


def test_reference_pages_render_one_module_each() -> None:
    for page in sorted(REFERENCE.glob("*.md")):
        if page.name == "index.md":
            continue
        directives = re.findall(r"^::: (\S+)", page.read_text("utf-8"), re.MULTILINE)
        assert directives == [page.stem], f"{rel(page)} should render ::: {page.stem}"
        importlib.import_module(page.stem)


# -- includes ------------------------------------------------------------------------------

#: ``--8<-- "path"`` (a whole file) or ``--8<-- "path:region"``, relative to the repository.
_SNIPPET = re.compile(r'^(?P<indent>[ \t]*)--8<--[ \t]+"(?P<path>[^":]+)(?::(?P<region>[^"]*))?"')


def snippet_text(path: str, region: str | None) -> str:
    """What pymdownx.snippets includes for ``--8<-- "path[:region]"`` (markers removed)."""
    lines = (ROOT / path).read_text("utf-8").splitlines()
    if region is not None:
        starts = [n for n, line in enumerate(lines) if f"--8<-- [start:{region}]" in line]
        ends = [n for n, line in enumerate(lines) if f"--8<-- [end:{region}]" in line]
        if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
            raise ValueError(f"{path} has no single region {region!r}")
        lines = lines[starts[0] + 1 : ends[0]]
    kept = [line for line in lines if not re.search(r"--8<-- \[(start|end):", line)]
    return "\n".join(kept)


def with_snippets(text: str) -> str:
    """*text* with each include line replaced by what it includes."""

    def expand(match: re.Match[str]) -> str:
        return snippet_text(match["path"], match["region"])

    return re.sub(_SNIPPET.pattern + r"[ \t]*$", expand, text, flags=re.MULTILINE)


def test_every_include_names_an_existing_file_and_region() -> None:
    includes = 0
    problems = []
    for page in sorted(DOCS.rglob("*.md")):
        for n, line in enumerate(page.read_text("utf-8").splitlines(), start=1):
            if "--8<--" not in line:
                continue
            match = _SNIPPET.match(line)
            if match is None:
                problems.append(f'{rel(page)}:{n}: not --8<-- "path" or --8<-- "path:region"')
                continue
            includes += 1
            path, region = match["path"], match["region"]
            if region is not None and not re.fullmatch(r"[a-z][-_0-9a-z]*", region):
                problems.append(f"{rel(page)}:{n}: {region!r} is not a region name")
            elif not (ROOT / path).is_file():
                problems.append(f"{rel(page)}:{n}: no file {path}")
            else:
                try:
                    if not snippet_text(path, region).strip():
                        problems.append(f"{rel(page)}:{n}: {path}:{region} is empty")
                except ValueError as exc:
                    problems.append(f"{rel(page)}:{n}: {exc}")
    assert not problems, problems
    assert includes >= 10  # the how-tos do include their code


def test_no_copied_includes_left() -> None:
    """The retired ``<!-- include: ... -->`` marker stood above a copy of the file, kept
    current by the old generator; nothing refreshes such copies any more."""
    stale = [rel(p) for p in sorted(DOCS.rglob("*.md")) if "<!-- include:" in p.read_text("utf-8")]
    assert not stale, f'{stale}: replace each copied block by a --8<-- "path:region" line'


# -- links ---------------------------------------------------------------------------------

_FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.DOTALL | re.MULTILINE)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.DOTALL)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"""<(?:a|img)\s[^>]*?(?:href|src)=["']([^"']+)["']""")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)
_HTML_ANCHOR = re.compile(r"""<a\s[^>]*?(?:id|name)=["']([^"']+)["']""")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading (without the duplicate-heading suffix)."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


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
        base = slug(heading)
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def documents(reference_page: Path, fragment: str) -> bool:
    """Whether the mkdocstrings page renders the object *fragment* (its anchor is its path)."""
    module_name = reference_page.stem
    if fragment != module_name and not fragment.startswith(f"{module_name}."):
        return False
    obj: object = importlib.import_module(module_name)
    for name in fragment[len(module_name) + 1 :].split(".") if fragment != module_name else []:
        if name.startswith("_") or not hasattr(obj, name):
            return False
        obj = getattr(obj, name)
    return True


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
        elif not fragment or resolved.suffix != ".md":
            continue
        elif resolved.parent == REFERENCE and resolved.name != "index.md":
            if not documents(resolved, fragment):
                broken.append(f"{target} (#{fragment} is no object {rel(resolved)} documents)")
        elif fragment not in anchors(resolved):
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
    text = with_snippets((DOCS / name).read_text("utf-8"))
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
