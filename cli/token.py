"""`towerco token`: print a development JWT signed with the configured HS256 secret."""

from __future__ import annotations

import argparse
import re

HELP = "print a dev JWT (default: admin for tenant '*')"

_TENANT = re.compile(r"^(\*|[a-z][a-z0-9-]{1,31})$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """'3600', '90s', '30m', '24h', '7d' -> seconds (positive)."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text.lower())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 3600, 90s, 30m, 24h, 7d")
    seconds = int(match.group(1)) * _UNITS[match.group(2) or "s"]
    if seconds <= 0:
        raise argparse.ArgumentTypeError("duration must be positive")
    return seconds


def _tenant(text: str) -> str:
    if not _TENANT.match(text):
        raise argparse.ArgumentTypeError(f"invalid tenant {text!r}: '*' (staff) or a tenant id like 'safaricom'")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tenant", type=_tenant, default="*", help="tenant id, or '*' for towerco staff (default)")
    parser.add_argument("--role", action="append", dest="roles", metavar="ROLE",
                        help="viewer, noc_operator, admin, tenant_viewer or service; repeatable (default admin)")
    parser.add_argument("--sub", default="", help="subject (default dev-<role>)")
    parser.add_argument("--ttl", type=parse_ttl, default=86400, help="lifetime, e.g. 30m, 24h, 7d (default 24h)")


def run(args: argparse.Namespace) -> int:
    from cli.errors import CliError
    from mesh.auth import ROLES, STAFF_TENANT, TENANT_ROLES, claims_problem, mint_token

    roles = args.roles or ["admin"]
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise CliError(f"unknown role {', '.join(unknown)}; choose from {', '.join(sorted(ROLES))}", code=2)
    if args.tenant == STAFF_TENANT and set(roles) & TENANT_ROLES:
        raise CliError("tenant_viewer is scoped to one tenant: give --tenant <tenant id>, e.g. --tenant safaricom",
                       code=2)
    problem = claims_problem(args.tenant, roles)
    if problem:
        raise CliError(f"cannot mint this token: {problem}", code=2)
    subject = args.sub or f"dev-{roles[0]}"
    print(mint_token(subject=subject, tenant=args.tenant, roles=roles, ttl_s=args.ttl))
    return 0
