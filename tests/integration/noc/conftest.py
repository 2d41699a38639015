from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nocstack import noc_stack  # noqa: E402


@pytest.fixture(scope="session")
async def noc(stack):
    """One NOC platform for the NOC integration tests (nocstack.py); each test uses its own sites."""
    async with noc_stack(stack) as s:
        yield s
