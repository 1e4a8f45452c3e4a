"""Schemathesis over the OpenAPI document against a real API process, every check on: no server
error, no status the document does not list, no schema-valid input refused (beyond the business
rules stated in tests/fuzz/schemathesis.toml), no schema-violating input accepted. Bounded here;
`./manage fuzz` runs it longer."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def test_the_fuzzer_finds_no_server_error_and_no_undocumented_status(
    database_url: str, redis_url: str
) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / "run.py"), "--max-examples", "25"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
