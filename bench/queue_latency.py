"""Submit→start latency of the job queue, measured against a launched Studio.

Starts ``studio serve`` (web + huey consumer process) on a scratch data dir, submits N jobs of
the test engine one at a time over REST, and reads each job's created/started times from
the jobs table. Prints one JSON object.

    studio bench queue --json [--n 50]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path


def _ts(s: str) -> datetime:
    return datetime.fromisoformat(s.rstrip("Z"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench queue")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import httpx

    from bench.harness import StudioProcess, free_port, wait_for

    with tempfile.TemporaryDirectory() as td:
        srv = StudioProcess(Path(td) / "data", free_port())
        try:
            srv.worker_ready()
            lat, e2e = [], []
            for _ in range(args.n):
                t0 = time.perf_counter()
                jid = httpx.post(f"{srv.url}/api/v1/jobs",
                                 json={"engine": "test-steps", "params": {"steps": 1, "step_s": 0, "images": 0}}).json()["id"]
                j = wait_for(lambda: (x := httpx.get(f"{srv.url}/api/v1/jobs/{jid}").json())["status"] == "completed" and x,
                             30, 0.005, "job done")
                e2e.append(time.perf_counter() - t0)
                lat.append((_ts(j["started_at"]) - _ts(j["created_at"])).total_seconds())
        finally:
            srv.stop()
    q = statistics.quantiles(lat, n=20)
    print(json.dumps({"n": args.n, "submit_to_start_p50_ms": round(statistics.median(lat) * 1000, 1),
                      "submit_to_start_p95_ms": round(q[18] * 1000, 1),
                      "submit_to_done_p50_ms": round(statistics.median(e2e) * 1000, 1),
                      "poll_interval_ms": 50}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
