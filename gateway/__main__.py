"""`python -m gateway [--host H] [--port P] [--workers N]`."""

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
