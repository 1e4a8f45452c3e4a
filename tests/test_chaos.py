"""Bounded chaos cases: break one part under a steady click load, then every click answered 302
must be in PostgreSQL exactly once. The full-length suite is `loadtests/chaos`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loadtests.chaos import FAULTS, run_fault


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_no_click_lost_or_doubled_when(fault: str, database_url: str, tmp_path: Path) -> None:
    if fault == "postgresql down" and not os.environ.get("PG_DATA_DIR"):
        pytest.skip("needs the PostgreSQL that ./manage test started")
    outcome = await run_fault(fault, tmp_path, database_url, seconds=2.0, pg_seconds=3.0)
    print(outcome.line())
    assert outcome.acknowledged > 50, outcome.line()
    assert outcome.lost == 0, outcome.line()
    assert outcome.postbacks_acknowledged > 5, outcome.line()
    assert outcome.postbacks_lost == 0, outcome.line()
    assert outcome.duplicates == 0, outcome.line()
    assert outcome.webhooks_announced > 5, outcome.line()
    assert outcome.webhooks_lost == 0 and outcome.webhooks_invented == 0, outcome.line()
    if fault != "api SIGKILL + restart":
        assert outcome.stored == outcome.acknowledged, outcome.line()
    if fault != "api SIGKILL + restart":
        # Only a dead API may fail to answer: Redis down, PostgreSQL down, a full stream or a dead
        # flusher never keep a shopper from being redirected.
        assert outcome.acknowledged == outcome.sent, outcome.line()
