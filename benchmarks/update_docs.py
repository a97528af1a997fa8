"""Copy the latest ``benchmarks/results/results.md`` into ``docs/benchmarks.md``, and its
charts into ``docs/img/`` (the documentation site holds only what is under ``docs/``).

    .venv/bin/python -m benchmarks.run && .venv/bin/python -m benchmarks.update_docs

The docs page keeps its own introduction and notes; only the part between the
``<!-- results:start -->`` and ``<!-- results:end -->`` markers is replaced: the results
without their title, their headings moved one level down to sit under the page's
"Latest results".
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "results.md"
PAGE = ROOT / "docs" / "benchmarks.md"
IMAGES = ROOT / "docs" / "img"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def splice(page: str, results: str) -> str:
    if START not in page or END not in page:
        raise ValueError(f"{PAGE} lacks the {START} / {END} markers")
    text = results.strip()
    if text.startswith("# "):  # the page has its own title and section heading
        text = text.split("\n", 1)[1].strip()
    body = re.sub(r"^(#+) ", r"#\1 ", text, flags=re.MULTILINE)
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n\n{body}\n\n{END}{tail}"


def main() -> int:
    if not RESULTS.is_file():
        print(f"no {RESULTS}: run `python -m benchmarks.run` first", file=sys.stderr)
        return 1
    PAGE.write_text(
        splice(PAGE.read_text(encoding="utf-8"), RESULTS.read_text(encoding="utf-8")),
        encoding="utf-8",
    )
    IMAGES.mkdir(exist_ok=True)
    for chart in sorted(RESULTS.parent.glob("*.png")):
        shutil.copyfile(chart, IMAGES / chart.name)
    print(
        f"updated {PAGE.relative_to(ROOT)} and {IMAGES.relative_to(ROOT)}/ "
        f"from {RESULTS.parent.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
