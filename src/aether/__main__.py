"""``python -m aether``: the same as the ``aether`` console script."""

from aether.cli import main

# The guard matters: spawned worker processes import this module as ``__mp_main__``.
if __name__ == "__main__":
    main()
