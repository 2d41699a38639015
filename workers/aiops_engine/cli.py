"""`towerco aiops backtest IN.csv [--timestamp-column C] [--value-column V] [-o OUT.csv]`: the
AIOps engine's univariate streaming detector over any CSV, strictly causally (each row's score
uses only earlier rows). `--site-file F.csv --truth faults.jsonl` replays a simulator dump through
the full engine and scores it against the ground truth. See docs/aiops.md.

A command module of the `towerco` CLI living with the engine (as gateway/cli.py lives with the
gateway): the CLI's own package imports no worker code; cli/main.py names this module.
"""

from __future__ import annotations

import argparse

HELP = "AIOps tools: backtest the streaming detectors on any CSV time series."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="aiops_command", metavar="<tool>", required=True)
    bt = sub.add_parser("backtest", help="score every row of a CSV time series (causal, no parameters)")
    bt.add_argument("input", nargs="?", default="", help="the CSV: one timestamp column and one numeric column")
    bt.add_argument("--timestamp-column", default=None, help="the timestamp column (default: found)")
    bt.add_argument("--value-column", default=None, help="the value column (default: the first numeric one)")
    bt.add_argument("-o", "--output", default="", help="output CSV (default: stdout)")
    bt.add_argument("--site-file", default="", help="a simulator dump (time,site_id,metric,tenant_id,value)")
    bt.add_argument("--truth", default="", help="its ground truth (faults.jsonl) to score against")


def run(args: argparse.Namespace) -> int:
    # the detector is the engine's own (workers/aiops_engine/domain.py), pure and imported lazily
    from workers.aiops_engine.backtest import main

    try:
        return main(args)
    except (ValueError, OSError) as exc:
        import sys

        print(f"towerco aiops backtest: {exc}", file=sys.stderr)
        return 2
