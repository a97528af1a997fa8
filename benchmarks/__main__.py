"""``python -m benchmarks``: the same as ``python -m benchmarks.run`` (the whole suite)."""

from benchmarks.run import main

main()
