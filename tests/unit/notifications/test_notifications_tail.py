"""`towerco notifications tail --no-follow` prints what the local sink logged, one line each."""

from __future__ import annotations

import json
import subprocess
import sys

from workers.notifier.sink import Received


def test_tail_prints_webhooks_and_emails(tmp_path):
    log = tmp_path / "sink.jsonl"
    hook = Received("webhook", 1_800_000_000.0, path="/hooks/noc", status=200, signature_ok=True,
                    headers={"idempotency-key": "n-1"},
                    body=json.dumps({"summary": "[FIRING] MAJOR TWR-1: mains failure", "kind": "firing"}).encode())
    bad = Received("webhook", 1_800_000_001.0, path="/hooks/noc", status=401, signature_ok=False, body=b"{}")
    mail = Received("email", 1_800_000_002.0, rcpt_to=["noc@towerco.local"], subject="[ESCALATION step 1] x")
    log.write_text("".join(json.dumps(r.record()) + "\n" for r in (hook, bad, mail)))
    out = subprocess.run([sys.executable, "-m", "cli.main", "notifications", "tail", "--no-follow", "--file",
                          str(log), "-n", "10"], capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert "webhook /hooks/noc 200 signed ok: [FIRING] MAJOR TWR-1: mains failure [n-1]" in lines[0]
    assert "BAD SIGNATURE" in lines[1]
    assert "email   to noc@towerco.local: [ESCALATION step 1] x" in lines[2]
