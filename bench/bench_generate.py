"""Generation throughput: concurrent versus sequential, side by side, against the local
fault-injecting server (fixed latency per request, 30% of requests misbehaving).

    python bench/bench_generate.py                 # 200 examples, concurrency 16 vs 1 (~2 minutes)
    python bench/bench_generate.py --n 40          # a quick check

Reports the speed-up, the efficiency against the ideal N x latency / concurrency, the requests
sent per record kept, and whether both runs kept the same records (a hash of ids and messages:
the server's faults depend only on the request, never on timing, so both runs must agree).
Writes bench/results/generate.json. I/O-bound: the CPU only parses and writes JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fault_server import FaultConfig, FaultServer  # noqa: E402
from persona_lib import dataset, generate, io, llm  # noqa: E402
from persona_lib.spec import load_spec  # noqa: E402


def records_hash(records: list[dict]) -> str:
    rows = sorted(json.dumps({"id": r["id"], "messages": r["messages"]}, sort_keys=True) for r in records)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def one_run(server: FaultServer, url: str, concurrency: int, args, spec, against, folder: Path) -> dict:
    server.settle()  # the previous run's late requests (time-outs) are in, then forgotten
    server.reset()
    endpoint = llm.Endpoint.compatible(url, "fault-server", timeout=args.timeout)
    config = generate.GenerateConfig(n=args.n, concurrency=concurrency, progress=not args.quiet, spend_cap_usd=None,
                                     seed=args.seed,
                                     retry=llm.RetryPolicy(max_attempts=30, base_delay=0.05, max_delay=1.0))
    start = time.perf_counter()
    result = generate.run(spec, endpoint, folder / f"generated_c{concurrency}.jsonl", config, against=against)
    seconds = time.perf_counter() - start
    server.settle()
    stats = server.stats()
    kept = len(result.records)
    return {"concurrency": concurrency, "seconds": round(seconds, 3), "records_kept": kept,
            "unique_ids": len({r["id"] for r in result.records}), "requests": stats["requests"],
            "requests_per_record": round(stats["requests"] / max(kept, 1), 3), "faults": stats["faults"],
            "retries": result.report["retries"], "reasks": result.report["reasks"],
            "rejected": result.report["rejected_this_run"], "failed": result.report["failed_this_run"],
            "records_hash": records_hash(result.records)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="examples per run")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per request")
    p.add_argument("--fault-rate", type=float, default=0.3)
    p.add_argument("--timeout", type=float, default=1.0, help="client time-out; the server's time-outs hang 2x this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "generate.json"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    spec = load_spec("taskmaster")
    against = dataset.load_shipped("taskmaster")
    config = FaultConfig(fault_rate=args.fault_rate, latency=args.latency, seed=args.seed, retry_after=args.latency,
                         hang=2 * args.timeout)
    server = FaultServer(config)
    url = server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
            sequential = one_run(server, url, 1, args, spec, against, Path(tmp))
            concurrent = one_run(server, url, args.concurrency, args, spec, against, Path(tmp))
    finally:
        server.stop()

    ideal = args.n * args.latency / args.concurrency
    result = {
        "benchmark": "generate: concurrent vs sequential against the fault-injecting server",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "setup": {"n": args.n, "latency_s": args.latency, "fault_rate": args.fault_rate,
                  "faults": list(config.faults), "client_timeout_s": args.timeout, "hang_s": config.hang,
                  "retry_after_s": config.retry_after, "seed": args.seed},
        "sequential": sequential,
        "concurrent": concurrent,
        "speedup": round(sequential["seconds"] / concurrent["seconds"], 2),
        "speedup_goal": 8.0,
        "ideal_concurrent_s": round(ideal, 3),  # N x latency / concurrency: no faults, no overhead
        "efficiency_vs_ideal": round(ideal / concurrent["seconds"], 3),
        # the same ideal, counting the requests the faults made necessary
        "efficiency_vs_requests_sent": round(concurrent["requests"] * args.latency / args.concurrency
                                             / concurrent["seconds"], 3),
        "same_records": sequential["records_hash"] == concurrent["records_hash"],
        "exactly_n_each": sequential["records_kept"] == concurrent["records_kept"] == args.n
                          and sequential["unique_ids"] == concurrent["unique_ids"] == args.n,
    }
    io.write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("speedup", "ideal_concurrent_s", "efficiency_vs_ideal",
                                             "efficiency_vs_requests_sent", "same_records", "exactly_n_each")}))
    print(f"sequential {sequential['seconds']:.1f} s, {sequential['requests_per_record']} requests/record; "
          f"concurrency {args.concurrency}: {concurrent['seconds']:.1f} s, "
          f"{concurrent['requests_per_record']} requests/record -> {args.out}")
    return result


if __name__ == "__main__":
    main()
