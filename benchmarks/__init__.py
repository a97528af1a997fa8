"""aether's benchmark suite, run from a checkout: ``python -m benchmarks.run`` (not installed).

Every workload runs next to its baselines in the same run (raw nats-py: the client
ceiling; the eventsourcing library on SQLite and, given a DSN, PostgreSQL), rounds
interleaved, and is reported as medians and ratios to those baselines, in
``results.json``, ``results.md`` and PNG charts.

The optional dependencies (eventsourcing, psycopg, matplotlib: the ``bench`` extra) are
imported only when needed; a missing one raises :class:`BenchDependencyError`.
"""

from benchmarks.model import (
    FULL,
    QUICK,
    WORKLOADS,
    BenchDependencyError,
    NullProgress,
    ProgressSink,
    Sizes,
    SuiteResult,
    Target,
)
from benchmarks.suite import (
    DEFAULT_OUT_DIR,
    POSTGRES_DSN_ENV,
    Connector,
    SuiteOptions,
    run_suite,
)

__all__ = [
    "DEFAULT_OUT_DIR",
    "FULL",
    "POSTGRES_DSN_ENV",
    "QUICK",
    "WORKLOADS",
    "BenchDependencyError",
    "Connector",
    "NullProgress",
    "ProgressSink",
    "Sizes",
    "SuiteOptions",
    "SuiteResult",
    "Target",
    "run_suite",
]
