"""Lesson 3 without a key, measured: the embedded SmolLM2-135M as the teacher, behind the local
llama.cpp server, through the same gate an OpenAI run goes through.

Runs `generate.run` with lesson 3's no-key configuration (`GenerateConfig.smoke(n=...)`, one
request per example, the lesson's N_LOCAL by default scaled up to --n for a steadier rate) and
records what a learner sees: how many records the gate kept and why it rejected the rest, the
seconds per request, vocabulary coverage, and the first kept records as an excerpt. It shows why
the lesson keeps the local model's records out of training.

    python bench/bench_generate_local.py            # 12 examples (~2 minutes on 2 cores) -> generate_local.json
    python bench/bench_generate_local.py --n 2 --results /tmp/g.json   # a quick check
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from persona_lib import generate, io, llm
from persona_lib.llama_build import cpu_model
from persona_lib.spec import load_spec

RESULTS = Path(__file__).parent / "results" / "generate_local.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=12, help="examples asked for (one request each)")
    parser.add_argument("--persona", default="taskmaster")
    parser.add_argument("--excerpt", type=int, default=3, help="kept records copied into the JSON")
    parser.add_argument("--results", default=str(RESULTS), help="JSON path")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")

    spec = load_spec(args.persona)
    config = generate.GenerateConfig.smoke(n=args.n, progress=True)
    with tempfile.TemporaryDirectory() as tmp, llm.local_server() as endpoint:
        start = time.perf_counter()
        result = generate.run(spec, endpoint, Path(tmp) / "generated.jsonl", config)
        seconds = time.perf_counter() - start
    report = result.report
    keep = ("accepted_this_run", "rejected_this_run", "failed_this_run", "acceptance_rate", "near_duplicate_rate",
            "generic_rate", "distinct_2", "vocabulary", "requests", "reasks", "tokens", "endpoint")
    out = {
        "what": __doc__.split("\n\n")[0],
        "command": "python bench/bench_generate_local.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "persona": spec.slug, "n": args.n,
        "config": {"max_tokens": config.max_tokens, "reasks": config.reasks, "concurrency": config.concurrency},
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "seconds": round(seconds, 1), "seconds_per_request": round(seconds / max(report.get("requests", 0), 1), 2),
        "report": {k: report[k] for k in keep if k in report},
        "excerpt": [{"id": r["id"], "topic": r["topic"], "messages": r["messages"]}
                    for r in result.records[: args.excerpt]],
    }
    io.write_json(args.results, out)
    print(f"kept {report.get('accepted_this_run')} of {args.n} in {seconds:.0f} s; "
          f"rejected {report.get('rejected_this_run')}"
          f"\nwrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
