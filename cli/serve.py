"""`towerco serve <process>`: become one process of the platform (what a container runs).

The current process is replaced by `python -m <module>` (os.execv), so signals reach the
service directly and the container's exit code is the service's.
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "run one process in the foreground (for containers)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from cli.processes import BY_NAME

    parser.add_argument("process", choices=sorted(BY_NAME), help="process type")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="arguments passed to the process")


def run(args: argparse.Namespace) -> int:
    from cli.errors import CliError
    from cli.processes import BY_NAME

    proc = BY_NAME[args.process]
    if not proc.exists():
        raise CliError(f"{proc.name}: module {proc.module} is not part of this build")
    argv = [*proc.command(sys.executable), *args.extra]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
    return 0  # not reached
