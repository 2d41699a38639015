"""`python -m gateway.server [--workers N]`: the process the launcher and compose.yaml start."""

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
