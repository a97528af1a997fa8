"""Run the whole benchmark suite from a checkout: the same command as ``aether bench``.

    .venv/bin/python benchmarks/run.py            # full run, a few minutes
    .venv/bin/python benchmarks/run.py --quick    # smoke run, well under a minute
    .venv/bin/python benchmarks/run.py --help     # every option

Results go to ``benchmarks/results/`` (results.json, results.md, PNG charts). The suite
itself lives in the package (``aether._bench``), so the installed ``aether bench``
command runs exactly the same code; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    # Prefer this checkout's sources over whatever aether is installed.
    sys.path.insert(0, str(ROOT / "src"))
    from aether.cli.bench import bench

    # Default --out to this checkout's benchmarks/results, wherever we are run from.
    bench.main(
        prog_name="python benchmarks/run.py",
        default_map={"out_dir": ROOT / "benchmarks" / "results"},
    )
