"""A local notification sink: an SMTP server (aiosmtpd) and an HTTP webhook receiver that record
what arrives, for the embedded stack (`towerco up` runs `python -m workers.notifier.sink`, so a
new user sees notifications arrive; `towerco notifications tail` prints them), the tests and the
benchmark. Both are real servers on loopback ports.

Every received webhook is checked: its X-Towerco-Signature against the sink's secret (when it has
one) and its Idempotency-Key against those already accepted (a repeat is answered 200 and
recorded as a duplicate, as a well-behaved receiver does)."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from workers.notifier import domain

log = logging.getLogger("towerco.sink")


@dataclass
class Received:
    """One webhook request or email."""

    channel: str  # "webhook" or "email"
    time: float
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    status: int = 0
    signature_ok: bool | None = None
    duplicate: bool = False
    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    subject: str = ""
    text: str = ""
    html: str = ""

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    @property
    def idempotency_key(self) -> str:
        return self.headers.get(domain.IDEMPOTENCY_HEADER.lower(), "")

    def record(self) -> dict[str, Any]:
        """The line written to the sink's log (what `towerco notifications tail` prints)."""
        out: dict[str, Any] = {"channel": self.channel, "time": self.time}
        if self.channel == "webhook":
            body = self.json() if self.body else {}
            out.update(path=self.path, status=self.status, signature_ok=self.signature_ok, duplicate=self.duplicate,
                       notification_id=self.idempotency_key, summary=body.get("summary", ""),
                       kind=body.get("kind", ""))
        else:
            out.update(mail_from=self.mail_from, rcpt_to=self.rcpt_to, subject=self.subject)
        return out


Responder = Callable[[str, int], int]  # (path, nth request to that path, from 1) -> HTTP status


class WebhookReceiver:
    """An HTTP/1.1 server on 127.0.0.1 recording every POST. `respond` picks the status (default
    200); `secret` turns on signature checks."""

    def __init__(self, *, port: int = 0, secret: str = "", respond: Responder | None = None,
                 on_receive: Callable[[Received], None] | None = None) -> None:
        self.port = port
        self.secret = secret
        self.respond = respond or (lambda path, n: 200)
        self.on_receive = on_receive
        self.received: list[Received] = []
        self._counts: dict[str, int] = {}
        self._accepted: set[str] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted(self, path: str | None = None) -> list[Received]:
        """Requests answered 2xx that were not duplicates (what a receiver acted on)."""
        return [r for r in self.received if 200 <= r.status < 300 and not r.duplicate
                and (path is None or r.path == path)]

    async def start(self) -> WebhookReceiver:
        self._server = await asyncio.start_server(self._conn, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status = self._handle(method, path, headers, body)
                reason = {200: "OK", 404: "Not Found"}.get(status, "Status")
                writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\n\r\n".encode())
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        except asyncio.CancelledError:  # the server is closing: drop the idle keep-alive connection
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        if method != "POST":
            return 404
        n = self._counts[path] = self._counts.get(path, 0) + 1
        rec = Received("webhook", time.time(), path=path, headers=headers, body=body)
        if self.secret:
            rec.signature_ok = domain.verify(self.secret, headers.get(domain.SIGNATURE_HEADER.lower(), ""), body,
                                             now=time.time())
        status = self.respond(path, n)
        if self.secret and not rec.signature_ok:
            status = 401
        key = rec.idempotency_key
        if 200 <= status < 300 and key:
            rec.duplicate = key in self._accepted
            self._accepted.add(key)
        rec.status = status
        self.received.append(rec)
        if self.on_receive:
            self.on_receive(rec)
        return status


class _MailHandler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        text = html = ""
        for part in msg.walk():
            ctype = part.get_content_type()
            if ctype == "text/plain" and not text:
                text = part.get_content()
            elif ctype == "text/html" and not html:
                html = part.get_content()
        rec = Received("email", time.time(), headers={k.lower(): str(v) for k, v in msg.items()}, body=raw,
                       mail_from=envelope.mail_from or "", rcpt_to=list(envelope.rcpt_tos),
                       subject=str(msg.get("Subject", "")).strip(), text=text, html=html)
        status = self.sink.respond(rec)
        if status != 250:
            return f"{status} refused by the test sink"
        self.sink.received.append(rec)
        if self.sink.on_receive:
            self.sink.on_receive(rec)
        return "250 Message accepted for delivery"


class SmtpSink:
    """An SMTP server (aiosmtpd) in this event loop on 127.0.0.1, recording every message."""

    def __init__(self, *, port: int = 0, respond: Callable[[Received], int] | None = None,
                 on_receive: Callable[[Received], None] | None = None) -> None:
        self.port = port
        self.respond = respond or (lambda rec: 250)
        self.on_receive = on_receive
        self.received: list[Received] = []
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> SmtpSink:
        loop = asyncio.get_running_loop()
        handler = _MailHandler(self)
        self._server = await loop.create_server(lambda: SMTP(handler, hostname="towerco-sink"), "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


async def serve(*, smtp_port: int, http_port: int, secret: str, log_path: Path) -> None:
    """Run both until cancelled, appending one JSON line per arrival to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def write(rec: Received) -> None:
        with log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec.record()) + "\n")

    smtp = await SmtpSink(port=smtp_port, on_receive=write).start()
    web = await WebhookReceiver(port=http_port, secret=secret, on_receive=write).start()
    log.info("notification sink: SMTP 127.0.0.1:%d, webhooks %s, log %s", smtp.port, web.url, log_path)
    try:
        await asyncio.Event().wait()
    finally:
        await web.stop()
        await smtp.stop()


def main() -> None:
    from mesh import config, lifecycle
    from mesh.observability import configure_logging

    settings = config.get_settings()
    configure_logging(settings, "sink")
    sink = config.load(config.SinkSettings)
    lifecycle.run(serve(smtp_port=sink.smtp_port, http_port=sink.http_port, secret=sink.secret,
                        log_path=settings.home / "notifications" / "sink.jsonl"))


if __name__ == "__main__":
    main()
