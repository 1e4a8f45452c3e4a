"""The ops board and alerts (ops/): promtool checks the alert rules and both /metrics endpoints
(the API's and a real flusher process's), and every metric the Grafana board or an alert rule
queries exists in those scrapes. `./manage test` installs promtool (Debian's prometheus)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess

import httpx

from app.settings import Settings
from tests.conftest import ROOT, flusher_process, free_port

OPS = ROOT / "ops"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
_METRIC = re.compile(r"\breferral_[a-z_]+")


def _names(exposition: str) -> set[str]:
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _queried(text: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", m) for m in _METRIC.findall(text)}


async def _scrapes(client: httpx.AsyncClient, settings: Settings) -> tuple[str, str]:
    api = (await client.get("/metrics")).text
    port = free_port()
    flusher = flusher_process(settings, burst=False, FLUSHER_METRICS_PORT=str(port))
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                try:
                    answer = await http.get(f"http://127.0.0.1:{port}/metrics")
                    break
                except httpx.HTTPError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the flusher's /metrics never answered")
    finally:
        flusher.send_signal(signal.SIGTERM)
        flusher.wait(timeout=20)
    return api, answer.text


def test_the_alert_rules_pass_promtool() -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(OPS / "prometheus" / "alerts.yml")],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


async def test_both_metrics_endpoints_pass_promtool_and_hold_what_the_board_queries(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    api, flusher = await _scrapes(client, settings)
    for scrape in (api, flusher):
        result = await asyncio.to_thread(
            subprocess.run, [PROMTOOL, "check", "metrics"], input=scrape, capture_output=True,
            text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    exposed = _names(api) | _names(flusher)
    board = json.loads((OPS / "grafana" / "dashboards" / "referral.json").read_text())
    expressions = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert len(expressions) >= 15
    missing = set().union(*(_queried(e) for e in expressions)) - exposed
    assert not missing, f"the board queries metrics no endpoint exposes: {sorted(missing)}"
    rules = (OPS / "prometheus" / "alerts.yml").read_text()
    missing = _queried(rules) - exposed
    assert not missing, f"alert rules query metrics no endpoint exposes: {sorted(missing)}"
