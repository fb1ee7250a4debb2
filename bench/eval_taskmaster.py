"""The full evaluation report for a TaskMaster adapter on CPU (the issue's "Measure").

Targets, each decided on paired per-prompt differences with bootstrap intervals: the tuned
model without a system prompt at least as persona-consistent as the base model with it (lower
bound >= 0), knowledge recall down by at most 2 percentage points, output diversity within
10% of the reference replies'.

    # full run: the adapter lesson 4 / `persona run` trained on the embedded SmolLM2-135M,
    # every held-out prompt, dialogue and knowledge question; the judge is OpenAI with a key,
    # else the local llama.cpp server (about 25 minutes on 2 cores, most of it generation)
    python bench/eval_taskmaster.py --adapter runs/taskmaster/adapter
    # deterministic measures only (no judge), about 15 minutes
    python bench/eval_taskmaster.py --adapter runs/taskmaster/adapter --judge none
    # plumbing check on the tiny model with a placeholder adapter, in a minute
    python bench/eval_taskmaster.py --placeholder tiny --max-prompts 8 --dialogues 2 --knowledge 6 \
        --max-new-tokens 16 --knowledge-max-new-tokens 16 --judge none --out /tmp/eval_tiny

The report goes to --out (default: the eval/ folder beside the adapter); the targets, key
numbers and timing also to bench/results/eval_taskmaster.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", help="a PEFT adapter folder (e.g. runs/taskmaster/adapter)")
    parser.add_argument("--placeholder", metavar="MODEL", help="instead of --adapter: an untrained placeholder "
                        "adapter on MODEL (tiny or embedded), to check the plumbing")
    parser.add_argument("--model", help="base model id; default: the adapter's own base model")
    parser.add_argument("--out", help="eval folder (default: <adapter>/../eval)")
    parser.add_argument("--max-prompts", type=int, help="held-out prompts (default: all)")
    parser.add_argument("--dialogues", type=int, help="scripted dialogues (default: all)")
    parser.add_argument("--knowledge", type=int, help="knowledge questions (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="reply length cap (held-out and dialogues)")
    parser.add_argument("--knowledge-max-new-tokens", type=int, default=200, help="answer length cap (knowledge)")
    parser.add_argument("--judge", choices=("auto", "openai", "local", "none"), default="auto",
                        help="auto: OpenAI with OPENAI_API_KEY, else the local llama.cpp server")
    parser.add_argument("--judge-prompts", type=int, help="prompts the judge sees (default: 12 OpenAI, 6 local)")
    parser.add_argument("--results", default=str(ROOT / "bench" / "results" / "eval_taskmaster.json"))
    args = parser.parse_args(argv)
    if bool(args.adapter) == bool(args.placeholder):
        parser.error("give exactly one of --adapter and --placeholder")

    from persona_lib import io
    from persona_lib.adapters import placeholder
    from persona_lib.evaluate import choose_judge, evaluate

    if args.placeholder:
        out = Path(args.out or ROOT / "runs" / "bench-placeholder" / "taskmaster" / "eval")
        adapter = placeholder(out / "placeholder_adapter", args.placeholder)
    else:
        adapter = Path(args.adapter)
        out = Path(args.out) if args.out else adapter.parent / "eval"
    sizes = dict(max_prompts=args.max_prompts, dialogues=args.dialogues, knowledge_questions=args.knowledge,
                 max_new_tokens=args.max_new_tokens, knowledge_max_new_tokens=args.knowledge_max_new_tokens)
    print(f"adapter {adapter}, report -> {out}")
    start = time.perf_counter()
    with choose_judge(args.judge, **sizes,
                      **({"judge_prompts": args.judge_prompts} if args.judge_prompts else {})) as choice:
        print(choice.description)
        report = evaluate("taskmaster", args.model, adapter, out, choice.config, judge=choice.judge)
    seconds = time.perf_counter() - start

    systems = report["systems"]
    summary = {
        "adapter": str(adapter), "base_model": report["base_model"], "judge": choice.description, "seconds": seconds,
        "targets": report["targets"], "timing": report["timing"],
        "prompts": report["prompts"]["n"], "knowledge_questions": report["knowledge"]["questions"],
        "persona_probability": {s: m["persona_probability"] for s, m in systems.items()},
        "signature_rate": {s: m["signature_rate"] for s, m in systems.items()},
        "generic_rate": {s: m["generic_rate"] for s, m in systems.items()},
        "distinct_2": {s: m["diversity"]["distinct_2"] for s, m in systems.items()},
        "classifier_accuracy": report["classifier"]["heldout"].get("accuracy"),
        "judge_rubric": {s: r["overall"] for s, r in report["judge"].get("rubric", {}).items()},
        "win_rates": {k: {x: v[x] for x in ("mean", "low", "high", "wins", "ties", "losses")}
                      for k, v in report["judge"].get("pairwise", {}).items()},
        "report": str(out / "report.json"), "summary": str(out / "summary.md"),
        "command": "python bench/eval_taskmaster.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    io.write_json(args.results, summary)
    for name, target in report["targets"].items():
        print(f"{name:<20} met: {target['met']!s:<5}  {target['question']}")
    print(f"{seconds:.0f} s; report {out / 'summary.md'}; numbers {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
