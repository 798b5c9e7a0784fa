"""Routed vs exhaustive search; same as `frip bench cluster` (see its --help)."""

import sys

from frip_engine.cli import main

if __name__ == "__main__":
    sys.argv = ["frip", "bench", "cluster", *sys.argv[1:]]
    main()
