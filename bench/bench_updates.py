"""How many updates does one persona's voice need? Side by side in one run.

Trains one persona's adapter (Captain Codebeard by default) on the embedded SmolLM2-135M with
bench_multi's settings (`MultiConfig.train_config()`: TrainConfig.cpu(), 2 epochs, but at least
N updates) for each N in --steps, then loads every adapter onto one base model and scores them
the way bench_multi scores separate adapters: the persona answers bench_multi's pooled held-out
prompts (10 per persona), the persona classifier attributes each reply, and the share it gives
the persona asked for is the diagonal (goal 0.8). Validation loss and training time come from
each adapter's manifest.

    python bench/bench_updates.py --runs /tmp/updates        # 60 and 120 updates, about 50 minutes
    python bench/bench_updates.py --steps 60 90 120 180 --runs /tmp/updates

An adapter already in <runs>/<persona>-<N>/adapter is reused (copy bench_multi's adapter there
as the N = 60 point): its training time then comes from its manifest.

Writes bench/results/updates_<persona>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from persona_lib.io import read_json, write_json

RESULTS = Path(__file__).parent / "results"


def intervals(rows: list[dict], persona: str) -> dict:
    """Each row's diagonal with a bootstrap interval over the prompts, and the paired difference
    of every row against the first (the same prompts answered at both update counts)."""
    from persona_lib.metrics import bootstrap_ci, paired_bootstrap

    heard = {r["steps"]: [float(x["heard_as"] == persona) for x in r["replies"]] for r in rows}
    first = rows[0]["steps"]
    return {"diagonal": {str(k): bootstrap_ci(v) for k, v in heard.items()},
            f"difference_vs_{first}": {str(k): paired_bootstrap(heard[first], v)
                                       for k, v in heard.items() if k != first}}


def main(argv=None) -> int:
    from persona_lib import multi
    from persona_lib.metrics import train_persona_classifier

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--persona", default="captain_codebeard", choices=multi.PERSONAS)
    parser.add_argument("--steps", type=int, nargs="+", default=[60, 120], help="update counts to compare")
    parser.add_argument("--model", default="embedded", help="embedded (the benchmark's model) or tiny (plumbing)")
    parser.add_argument("--prompts-per-persona", type=int, default=10)
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--runs", default="", help="run folder root (default: a fresh temporary folder)")
    parser.add_argument("--results", default="", help="default: bench/results/updates_<persona>.json")
    args = parser.parse_args(argv)

    slug = args.persona
    runs = Path(args.runs or tempfile.mkdtemp(prefix="bench_updates_"))
    results = Path(args.results or RESULTS / f"updates_{slug}.json")
    records = multi.training_records(slug)
    report: dict = {
        "what": f"{slug}'s adapter at several update counts, scored on bench_multi's bleed prompts",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "persona": slug, "model": args.model, "conversations": len(records),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    adapters, rows = {}, []
    for steps in args.steps:
        config = multi.MultiConfig(model=args.model, min_steps=steps).train_config()
        trained = multi.ensure_adapter(runs / f"{slug}-{steps}" / "adapter", config, records)
        folder = Path(trained["folder"])  # beside the asked-for folder when that holds another adapter
        manifest = read_json(folder / "manifest.json")
        adapters[f"{slug}-{steps}"] = folder
        rows.append({"min_steps": steps, "steps": manifest["steps"], "epochs": round(manifest["epochs"], 2),
                     "trained_here": trained["trained"], "train_s": trained["train_s"],
                     "eval_loss": manifest["metrics"].get("eval_loss"),
                     "first_eval_loss": manifest["metrics"].get("first_eval_loss"), "folder": str(folder)})

    model, tokenizer = multi.load_personas(args.model, adapters)
    classifier = train_persona_classifier()
    prompts = multi.bleed_prompts(multi.PERSONAS, args.prompts_per_persona)
    conversations = [p["messages"] for p in prompts]
    for row, name in zip(rows, adapters):
        start = time.perf_counter()
        replies = multi.persona_replies(model, tokenizer, conversations, name, max_new_tokens=args.max_new_tokens,
                                        batch_size=multi.MultiConfig.batch_size)
        row["generation_s"] = round(time.perf_counter() - start, 2)
        probs = classifier.predict_proba(replies)
        heard = [classifier.labels[k] for k in probs.argmax(1)]  # as bench_multi's bleed_matrix attributes
        row["diagonal"] = sum(h == slug for h in heard) / len(heard)
        row["mean_probability"] = float(probs[:, classifier.labels.index(slug)].mean())
        row["heard_as"] = {p: sum(h == p for h in heard) for p in multi.PERSONAS}
        row["by_prompt_persona"] = {p: sum(h == slug for h, q in zip(heard, prompts) if q["persona"] == p)
                                    / sum(q["persona"] == p for q in prompts) for p in multi.PERSONAS}
        row["replies"] = [{"prompt": q["id"], "heard_as": h, "reply": r} for q, h, r in zip(prompts, heard, replies)]
        print(f"{name}: {row['steps']} updates, diagonal {row['diagonal']:.2f}, validation loss {row['eval_loss']:.3f}")
    report["prompts"] = len(prompts)
    report["rows"] = rows
    report["intervals"] = intervals(rows, slug)
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(results, report)
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
