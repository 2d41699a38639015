from __future__ import annotations

import pytest
from secstack import security_stack


@pytest.fixture(scope="session")
async def sec(stack):
    """One security platform for the fuzzer and the isolation matrix (see secstack.py)."""
    stack.require_embedded()
    async with security_stack(stack) as s:
        yield s
