"""Schemathesis against the gateway's OpenAPI on a platform of its own (secstack): every
operation, every check, bounded examples, a fixed seed. Zero failures is the bar, but for the
product defects listed in KNOWN_DEFECTS (reported; every one is printed as reproduced or not).

GATEWAY_FUZZ_EXAMPLES (default 12) and GATEWAY_FUZZ_SEED tune the run."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).resolve().parent / "schemathesis"

# Product defects the fuzzer found (reported, not fixed here). A failure of schemathesis is
# tolerated only when it is one of these: (method, path template, check code, a text the failure's
# report must contain). Any other failure fails the test, and every other check keeps running on
# these operations (unlike a configuration exclusion). An entry that no longer shows is printed.
KNOWN_DEFECTS: list[tuple[str, str, str, str, str]] = [
    # empty: FILES-ID-UUID and BI-MONTH-1970 (rules the protos did not state) and GW-VERB-MATCH (a
    # verb-less template bound "<id>:verb") are fixed
]


def failure_sections(text: str) -> list[tuple[str, str, list[str], str]]:
    """(method, path, check codes, section text) of each failure schemathesis reports."""
    body = text.split("= FAILURES =", 1)[1] if "= FAILURES =" in text else ""
    body = body.split("= SUMMARY =", 1)[0]
    heads = list(re.finditer(r"^_{3,} (\S+) (\S+) _{3,}$", body, re.M))
    out = []
    for i, h in enumerate(heads):
        chunk = body[h.end(): heads[i + 1].start() if i + 1 < len(heads) else len(body)]
        out.append((h.group(1), h.group(2), re.findall(r"^- (ST\d+) ", chunk, re.M), chunk))
    return out


def unknown_failures(text: str) -> tuple[list[str], set[str]]:
    """The failures that are not KNOWN_DEFECTS, and the known defects seen."""
    unknown, seen = [], set()
    for method, path, codes, chunk in failure_sections(text):
        for code in codes or ["?"]:
            hit = [k for k in KNOWN_DEFECTS if (k[0], k[1], k[2]) == (method, path, code) and k[3] in chunk]
            if hit:
                seen.add(hit[0][4])
            else:
                unknown.append(f"{method} {path} {code}")
    return unknown, seen


def _config(spec: dict, path: Path) -> list[str]:
    """The checked-in settings plus generated rules: positive_data_acceptance is off for the
    operations whose validity JSON Schema cannot state, found in the document itself:
    - a declared field ordering (x-towerco-ordered): the generator's boundary cases break it;
      the ordering is enforced by the validation interceptor (tests/unit/mesh/test_mesh_validation.py);
    - a page token: tokens are opaque and only valid when the server issued them (the hooks drop
      generated ones in the fuzzing phase, the coverage phase sends them anyway).
    Every other check stays on for these operations."""
    skipped = sorted(op["operationId"] for item in spec["paths"].values() for op in item.values()
                     if op.get("x-towerco-ordered")
                     or any(p.get("name") == "page.token" for p in op.get("parameters", [])))
    ids = ", ".join(f'"{o}"' for o in skipped)
    path.write_text((HERE / "schemathesis.toml").read_text() + (
        "\n[[operations]]\n# generated: declared field orderings and opaque page tokens\n"
        f"include-operation-id = [{ids}]\nchecks.positive_data_acceptance.enabled = false\n"))
    return skipped


@pytest.mark.timeout(600)  # every operation of seven services, on 2 shared cores
async def test_schemathesis_every_operation_every_check(sec, tmp_path: Path) -> None:
    async with httpx.AsyncClient(base_url=sec.base) as client:
        spec = (await client.get("/api/v1/openapi.json")).json()
    operations = sum(len(item) for item in spec["paths"].values())
    config = tmp_path / "schemathesis.toml"
    ordered = _config(spec, config)
    env = dict(os.environ, SCHEMATHESIS_HOOKS="st_hooks",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [
        str(Path(sys.executable).parent / "schemathesis"), "--config-file", str(config),
        "run", f"{sec.base}/api/v1/openapi.json",
        # every check is on by default; naming them here would override the per-operation settings
        "--max-examples", os.environ.get("GATEWAY_FUZZ_EXAMPLES", "12"),
        "--phases", "examples,coverage,fuzzing",
        "--exclude-path-regex", ":(watch|tail)$",  # endless live feeds: covered by the isolation matrix and SSE tests
        "--header", f"Authorization: Bearer {sec.token('admin')}",
        "--request-timeout", "15",
        "--seed", os.environ.get("GATEWAY_FUZZ_SEED", "20261202"),
        "--generation-deterministic",
        "--workers", "1",
        "--no-color",
    ]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                cwd=tmp_path, env=env)
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    text = out.decode(errors="replace")
    if os.environ.get("GATEWAY_FUZZ_LOG"):  # the whole report, for a human
        await asyncio.to_thread(Path(os.environ["GATEWAY_FUZZ_LOG"]).write_text, text)
    cases = re.search(r"(\d+) generated", text)
    tested = re.search(r"Tested:\s+(\d+)", text)
    print(f"\nschemathesis: {tested.group(1) if tested else '?'} of {operations} operations tested "
          f"(live feeds excluded), {cases.group(1) if cases else '?'} cases; positive-acceptance off for "
          f"{len(ordered)} operations with declared orderings or page tokens")
    unknown, seen = unknown_failures(text)
    failed = re.search(r"(\d+) found (\d+) unique failures", text)
    for defect in sorted({k[4] for k in KNOWN_DEFECTS}):
        print(f"KNOWN PRODUCT DEFECT {defect}: {'reproduced' if defect in seen else 'NOT reproduced this run'}")
    if proc.returncode != 0:
        # a failing run passes only when every failure reported is a known defect
        assert failed and failure_sections(text) and "= ERRORS =" not in text, text[-12000:]
        assert not unknown, f"unexpected failures {unknown}:\n" + text[-12000:]
    assert cases and int(cases.group(1)) > 100, text[-3000:]
