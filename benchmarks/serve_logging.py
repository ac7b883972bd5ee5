"""What logging served answers to the prediction store costs: `finetune serve` with
`serving.log_share: 1.0` (every answer written to a SQLite `monitoring.db`) against 0 (none).

Trains and registers the sentiment model on the bundled sample with the project's own params
(MiniLM, served through its int8 ONNX export, the default), then, `--repeats` times, serves it
twice, logging off and on (the order alternating between repeats), each time a fresh `finetune
serve` process loaded by `finetune loadtest`'s clients (`--clients` concurrent, one text a request,
`--seconds` long) from this process. Per side: requests/s, p50 and p99 latency (median and min-max
over the repeats), every answer 200, and with logging on the rows in the store after the server
stopped (all answered texts, none dropped). The CPU model and flags are recorded beside them.
Writes benchmarks/results/serve_logging.json.

    python benchmarks/serve_logging.py [--repeats 3] [--clients 16] [--seconds 30]
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from common import ROOT, benchmark_parser, cpu_facts, pipeline_params, run_in_scratch, timing, write_result

TARGET = {"max_throughput_cost": 0.05}
FINETUNE = Path(sys.executable).parent / "finetune"
STAGES = ("collect", "validate", "split", "augment", "pretrain", "train", "evaluate", "register")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_health(url: str, server: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"finetune serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"finetune serve did not answer {url}/health within {timeout:.0f} s")


def serve_and_load(params: dict, log_share: float, db: Path, texts: list[str], clients: int, seconds: float) -> dict:
    """One `finetune serve` with `log_share`, loaded for `seconds`, then stopped with Ctrl-C; the load
    test's report and, with logging on, the rows the store holds."""
    from pipeline.serving.loadtest import load_test

    port = free_port()
    params = {**params, "serving": {**params["serving"], "port": port, "log_share": log_share},
              "monitoring": {**params.get("monitoring", {}), "db": str(db)}}
    params_file = Path(f"params-log{log_share:g}.yaml")
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    server = subprocess.Popen([str(FINETUNE), "--params", str(params_file), "serve"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, server)
        report = load_test(url, texts, clients, seconds)
    finally:
        server.send_signal(signal.SIGINT)  # as Ctrl-C: what is queued is written before it stops
        server.wait(timeout=120)
    if log_share:
        with sqlite3.connect(db) as store:
            report["rows_logged"] = store.execute("SELECT count(*) FROM predictions").fetchone()[0]
    print(f"log_share {log_share:g}: {report['requests_per_second']} requests/s, p50 {report['p50_latency_ms']} ms, "
          f"p99 {report['p99_latency_ms']} ms, statuses {report['status_counts']}"
          + (f", {report['rows_logged']} rows logged" if log_share else ""), flush=True)
    return report


def main() -> None:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    started = time.time()
    params = pipeline_params("sentiment", args.set)
    params["sentiment"]["data"]["source"] = str(ROOT / params["sentiment"]["data"]["source"])
    workspace = run_in_scratch(params, "sentiment", STAGES, "bench-serve-logging-")
    with open(ROOT / "data" / "sample" / "sentiment.csv", newline="", encoding="utf-8") as f:
        texts = [row["text"] for row in csv.DictReader(f)]

    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for side in (("off", "on") if repeat % 2 == 0 else ("on", "off")):
            db = workspace / f"store-{side}-{repeat}.db"
            runs[side].append(serve_and_load(params, 1.0 if side == "on" else 0.0, db, texts, args.clients, args.seconds))

    def figures(side: str) -> dict:
        found = runs[side]
        return {"requests_per_second": timing([r["requests_per_second"] for r in found], 1),
                "p50_latency_ms": timing([r["p50_latency_ms"] for r in found], 1),
                "p99_latency_ms": timing([r["p99_latency_ms"] for r in found], 1),
                "non_200": sum(r["requests"] - r["status_counts"].get("200", 0) for r in found)}

    off, on = figures("off"), figures("on")
    cost = 1 - on["requests_per_second"]["median"] / off["requests_per_second"]["median"]
    per_repeat = [1 - a["requests_per_second"] / b["requests_per_second"] for a, b in zip(runs["on"], runs["off"])]
    result = {
        "target": TARGET,
        "logging_off": off,
        "logging_on": {**on, "rows_logged": [r["rows_logged"] for r in runs["on"]],
                       "answers": [r["status_counts"].get("200", 0) for r in runs["on"]]},
        "throughput_cost": round(cost, 4),
        "throughput_cost_per_repeat": timing(per_repeat, 4),
        "meets_target": cost <= TARGET["max_throughput_cost"],
        "clients": args.clients, "seconds_per_run": args.seconds, "repeats": args.repeats,
        "model": params["sentiment"]["model"]["name"], "runtime": params["serving"]["runtime"],
        "store": "SQLite (WAL), one file beside the server",
        **cpu_facts(),
        "seconds": round(time.time() - started, 1),
    }
    os.chdir(ROOT)
    write_result("serve_logging", args.set, result)


if __name__ == "__main__":
    main()
