"""How many examples does a voice need, and which rank? A small sweep on CPU.

Trains the embedded SmolLM2-135M on 50, 100 and 200 TaskMaster conversations (nested subsets
of one seeded shuffle of the shipped data, so 100 contains the 50) at LoRA rank 8 and 16
(alpha = rank), each for the same 2 epochs with TrainConfig.cpu(), and scores every adapter,
and the untuned base model, without a system prompt on:

- the persona measure: the share of replies to held-out prompts that use at least one of the
  spec's signature phrases (and distinct-2 of those replies, to catch template collapse);
- knowledge recall on persona_data/eval/knowledge.jsonl: a fact counts when any of its
  accepted wordings appears in the answer (case-insensitive, whitespace-normalised).

Writes bench/results/sweep_style.json (rewritten after every run, so an interrupted sweep
resumes where it stopped) and bench/results/sweep_style.png, the figure notebook 04 shows.

    python bench/sweep_style.py                       # the full sweep (about 45 minutes on 2 idle cores)
    python bench/sweep_style.py --model tiny --sizes 4 8 --ranks 8 --max-steps 2 \\
        --prompts 2 --questions 2 --max-new-tokens 8 --results /tmp/sweep.json   # a plumbing check
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from persona_lib import io

RESULTS = Path(__file__).parent / "results" / "sweep_style.json"


def scores(model, tokenizer, spec, prompts, questions, max_new_tokens: int, label: str) -> dict:
    from persona_lib.chat import generate_replies
    from persona_lib.dataset import distinct_n
    from persona_lib.metrics import any_phrase, knowledge_recall

    replies = generate_replies(model, tokenizer, [p["messages"] for p in prompts], max_new_tokens=max_new_tokens,
                               desc=f"{label}: held-out prompts")
    answers = generate_replies(model, tokenizer, [[{"role": "user", "content": q["question"]}] for q in questions],
                               max_new_tokens=max_new_tokens, desc=f"{label}: knowledge")
    flags = any_phrase(replies, spec.signature_vocabulary)
    recall = knowledge_recall(questions, answers)
    return {"signature_rate": round(sum(flags) / len(flags), 4), "distinct_2": round(distinct_n(replies, 2), 4),
            "knowledge_recall": round(recall["recalled"] / recall["facts"], 4), "facts": recall["facts"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="base model (embedded; tiny for a plumbing check)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200], help="training conversations")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16], help="LoRA ranks (alpha = rank)")
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over each subset (the lesson's budget)")
    parser.add_argument("--max-steps", type=int, default=-1, help=">0: stop each run after that many steps")
    parser.add_argument("--prompts", type=int, default=24, help="held-out ordinary prompts scored")
    parser.add_argument("--questions", type=int, default=0, help="knowledge questions (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=120, help="reply length")
    parser.add_argument("--seed", type=int, default=0, help="shuffle of the shipped data the subsets are cut from")
    parser.add_argument("--results", default=str(RESULTS), help="JSON path; the figure goes beside it (.png)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from persona_lib.dataset import heldout_prompts, load_knowledge, load_shipped
    from persona_lib.models import load_model
    from persona_lib.plots import sweep_figure
    from persona_lib.spec import load_spec
    from persona_lib.train import TrainConfig, package_versions, train

    spec = load_spec("taskmaster")
    prompts = heldout_prompts(spec, args.prompts)
    questions = load_knowledge()[: args.questions or None]
    # The whole shipped set: no persona classifier grades this sweep, so its reserved slice may train.
    pool = load_shipped("taskmaster")
    random.Random(args.seed).shuffle(pool)
    settings = {"model": args.model, "epochs": args.epochs, "max_steps": args.max_steps, "prompts": len(prompts),
                "questions": len(questions), "max_new_tokens": args.max_new_tokens, "seed": args.seed,
                "pool": len(pool)}
    path = Path(args.results)
    report = io.read_json(path) if path.is_file() else {}
    if report.get("settings") != settings:
        report = {"settings": settings, "rows": [], "baseline": None}
    report.update(versions=package_versions(), what=__doc__.split("\n\n")[0])

    if report["baseline"] is None:
        model, tokenizer = load_model(args.model)
        report["baseline"] = scores(model, tokenizer, spec, prompts, questions, args.max_new_tokens, "base")
        io.write_json(path, report)
        del model
    done = {(r["requested_examples"], r["rank"]) for r in report["rows"]}
    for size in args.sizes:
        for rank in args.ranks:
            if (size, rank) in done:
                print(f"{size} examples, rank {rank}: done earlier, kept")
                continue
            records = pool[:size]
            config = TrainConfig.cpu(model_id=args.model, lora_r=rank, lora_alpha=rank, num_epochs=args.epochs,
                                     max_steps=args.max_steps, validation_fraction=0.0, eval_steps=0, save_steps=10**6)
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                result = train(config, records, Path(tmp) / "adapter")
                seconds = time.perf_counter() - start
                row = scores(result.model, result.tokenizer, spec, prompts, questions, args.max_new_tokens,
                             f"{size} examples, r={rank}")
            report["rows"].append({"requested_examples": size, "examples": len(records), "rank": rank, **row,
                                   "train_s": round(seconds, 1), "steps": result.manifest["steps"],
                                   "final_train_loss": result.train_loss})
            io.write_json(path, report)
            print(f"{len(records)} examples, rank {rank}: {row}")
    sweep_figure(report["rows"], baseline=report["baseline"],
                 title=f"TaskMaster on {args.model}: {args.epochs:g} epochs, no system prompt",
                 path=path.with_suffix(".png"))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
