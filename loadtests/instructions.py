"""Instructions per request of the raw ASGI 302 and of our redirect, under callgrind.

Wall-clock speed on a shared VM drifts by tens of percent; instruction counts do not. Each server
runs under `valgrind --tool=callgrind` (pinned like in the load test), gets the same wrk load
(64 connections over the links, in random order), and only the requests after a warm-up are
counted (`callgrind_control --zero`, then `--dump`). Use it to compare changes to the hot path.
Run through `loadtests/instructions` (provisions valgrind, PostgreSQL and Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import LOAD_CPU, ROOT, SERVER_CPU, UVICORN_FLAGS, prepare, wait_http, wrk


def instructions_per_request(args: list[str], port: int, codes: Path, seconds: float) -> float:
    out_dir = Path(tempfile.mkdtemp())
    server = subprocess.Popen(
        ["taskset", "-c", SERVER_CPU, "valgrind", "--tool=callgrind",
         f"--callgrind-out-file={out_dir}/callgrind.out", *args],
        cwd=ROOT, env={**os.environ, "LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(port, "/healthz", timeout=300)  # starting under valgrind takes a while
        wrk(port, 5, codes, env={"IN_ORDER": "1"})  # warm up: every link in turn (link cache)
        subprocess.run(["callgrind_control", "--zero", str(server.pid)], check=True,
                       capture_output=True)  # fmt: skip
        result = wrk(port, seconds, codes)
        subprocess.run(["callgrind_control", "--dump", str(server.pid)], check=True,
                       capture_output=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(60)
    [dump] = [f for f in glob.glob(f"{out_dir}/callgrind.out.*") if not f.endswith(".out")]
    print(f"  {result['requests']:,} requests, {result['non_3xx']} not 3xx, "
          f"{result['errors']} socket errors", flush=True)  # fmt: skip
    lines = Path(dump).read_text().splitlines()
    summary = next(line for line in lines if line.startswith("summary:"))
    return int(summary.split()[1]) / result["requests"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--links", type=int, default=200)
    options = parser.parse_args()
    dsn, redis_url = os.environ["DATABASE_URL"], os.environ["REDIS_URL"]
    codes_list, _ = asyncio.run(prepare(dsn, redis_url, options.links))
    codes = Path(tempfile.mkstemp(suffix=".codes")[1])
    codes.write_text("\n".join(codes_list) + "\n")
    print(f"callgrind, {options.seconds:g}s of wrk (64 connections, CPU {LOAD_CPU}) per server, "
          f"{len(codes_list)} links", flush=True)  # fmt: skip
    raw = instructions_per_request(
        [sys.executable, "-m", "uvicorn", "loadtests.raw_asgi:app", "--port", "18081",
         *UVICORN_FLAGS], 18081, codes, options.seconds,
    )  # fmt: skip
    print(f"raw ASGI 302 on uvicorn: {raw:,.0f} instructions per request", flush=True)
    ours = instructions_per_request(
        [sys.executable, "-m", "app.cli", "serve", "--port", "18082"], 18082, codes, options.seconds
    )
    print(f"our GET /r/{{code}}:      {ours:,.0f} instructions per request")
    print(f"ratio (raw / ours):     {raw / ours:.1%}")


if __name__ == "__main__":
    main()
