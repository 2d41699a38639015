"""Each service's migration writes its outbox table out in SQL (migrations are frozen text), and
mesh.outbox.outbox_ddl is the one definition the relay and the tests rely on: the copies must not
drift from it."""

import re
from pathlib import Path

from mesh import outbox

ROOT = Path(__file__).resolve().parents[3]
TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\.outbox\b")


def _norm(sql: str) -> str:
    sql = re.sub(r"--[^\n]*", "", sql)
    return re.sub(r"\s+", " ", sql).strip()


def test_every_migration_outbox_is_outbox_ddl():
    found = {}
    for path in sorted(ROOT.glob("services/*/migrations/*.sql")):
        for schema in TABLE.findall(path.read_text()):
            found[schema] = path
    # the five outboxes: a new one is welcome, a lost one is a bug
    assert {"sites", "kpi", "aiops", "noc", "notifications"} <= set(found), found
    for schema, path in found.items():
        assert _norm(outbox.outbox_ddl(schema)) in _norm(path.read_text()), \
            f"{path.relative_to(ROOT)}: its {schema}.outbox is not mesh.outbox.outbox_ddl({schema!r})"


def test_the_check_sees_a_drift():
    drifted = outbox.outbox_ddl("noc").replace("headers      jsonb", "headers      json")
    assert _norm(outbox.outbox_ddl("noc")) not in _norm(drifted)
