"""The embedded PostgreSQL stops even when pg_ctl cannot reach its data folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from mesh.embedded import EmbeddedPostgres


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to lock the folder")
def test_stop_falls_back_to_signalling_the_postmaster() -> None:
    home = Path(tempfile.mkdtemp(prefix="towerco-embedded-"))
    pg = EmbeddedPostgres(home / "pg", fast=True).start()
    try:
        assert pg.running()
        home.chmod(0o700)  # the unprivileged server user loses access: pg_ctl stop fails
        pg.stop()
        assert not pg.running()
    finally:
        home.chmod(0o755)
        pg.stop(mode="immediate")
        shutil.rmtree(home, ignore_errors=True)
