"""HE backends, layouts, presets and probe modes vs plaintext; same as `frip bench he`."""

import sys

from frip_engine.cli import main

if __name__ == "__main__":
    sys.argv = ["frip", "bench", "he", *sys.argv[1:]]
    main()
