"""The load test in its short CI mode: a few seconds of real load, checking only the accounting
(every redirect answered 302 is stored exactly once), never a speed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is installed by ./manage test")
def test_short_load_test_accounts_for_every_click(db: object) -> None:
    result = subprocess.run(
        [sys.executable, "loadtests/bench.py", "--short"],
        cwd=ROOT,
        env={**os.environ, "LOG_LEVEL": "WARNING", "SPOOL_DIR": "/tmp/referral-short-spool"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0
    [line] = [x for x in result.stdout.splitlines() if x.startswith("accounting:")]
    assert "duplicates = 0, lost = 0" in line
    match = re.search(r"answered 302 = ([\d,]+), stored in PostgreSQL = ([\d,]+)", line)
    assert match, line
    answered, stored = (int(group.replace(",", "")) for group in match.groups())
    assert answered == stored > 1000
