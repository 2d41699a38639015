"""`towerco notifications tail [-n N] [--no-follow]`: print the notifications the embedded stack's
local sink received (webhooks with their signature check, emails), following new ones.

A command module of the `towerco` CLI living with the notifier (as workers/aiops_engine/cli.py
does): the CLI's own package imports no worker code; cli/main.py names this module."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HELP = "Notifications: tail what the local SMTP sink and webhook receiver of `towerco up` received."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="notifications_command", metavar="<tool>", required=True)
    tail = sub.add_parser("tail", help="print received notifications, then follow new ones")
    tail.add_argument("-n", "--lines", type=int, default=20, help="how many of the latest to print first")
    tail.add_argument("--no-follow", action="store_true", help="print and exit")
    tail.add_argument("--file", default="", help="the sink's log (default: <TOWERCO_HOME>/notifications/sink.jsonl)")


def line(rec: dict) -> str:
    when = datetime.fromtimestamp(float(rec.get("time", 0)), tz=UTC).strftime("%H:%M:%S")
    if rec.get("channel") == "email":
        return f"{when} email   to {','.join(rec.get('rcpt_to', []))}: {rec.get('subject', '')}"
    sig = {True: "signed ok", False: "BAD SIGNATURE", None: "unsigned"}[rec.get("signature_ok")]
    dup = " (duplicate)" if rec.get("duplicate") else ""
    return (f"{when} webhook {rec.get('path', '')} {rec.get('status', '')} {sig}{dup}: "
            f"{rec.get('summary', '')} [{rec.get('notification_id', '')}]")


def run(args: argparse.Namespace) -> int:
    from mesh.config import get_settings

    path = Path(args.file) if args.file else get_settings().home / "notifications" / "sink.jsonl"
    if not path.exists() and args.no_follow:
        print(f"nothing received yet ({path} does not exist)", file=sys.stderr)
        return 0
    while not path.exists():
        time.sleep(0.5)
    with path.open(encoding="utf-8") as f:
        lines = f.readlines()
        for raw in lines[-args.lines:] if args.lines > 0 else []:
            print(line(json.loads(raw)), flush=True)
        if args.no_follow:
            return 0
        try:
            while True:
                raw = f.readline()
                if not raw:
                    time.sleep(0.3)
                    continue
                print(line(json.loads(raw)), flush=True)
        except KeyboardInterrupt:
            return 0
