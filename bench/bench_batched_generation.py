"""Batched versus one-prompt-at-a-time greedy generation on CPU, side by side in one run.

The evaluation answers every held-out prompt four times (base and tuned, without and with
the system prompt), so generation is its cost. `chat.generate_replies` pads a batch on the
left and decodes it together; this measures what that buys over one prompt at a time on the
same prompts, and whether the answers stay the same (padding changes the shapes of the
matrix products, and fp32 sums in a different order can flip a near-tie in greedy decoding).

Goal: at least 3x faster, identical output on at least 95% of prompts; the differing
prompts are listed with both outputs.

    # full run (the embedded SmolLM2-135M, all 49 TaskMaster held-out prompts, ~6 minutes on 2 cores)
    python bench/bench_batched_generation.py
    # reduced run (what ran on the shared 2-core box, where one torch thread beats two)
    python bench/bench_batched_generation.py --prompts 24 --max-new-tokens 64 --threads 1

Writes bench/results/batched_generation.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded (default), tiny, or a model folder")
    parser.add_argument("--persona", default="taskmaster")
    parser.add_argument("--prompts", type=int, default=None, help="held-out prompts to use (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=32, help="the batch of chat.generate_replies (its default)")
    parser.add_argument("--system-prompt", action="store_true", help="answer with the persona's system prompt")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice). On a busy shared "
                        "box 1 thread is several times faster than 2: OpenMP threads wait on each other")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "batched_generation.json"))
    args = parser.parse_args(argv)

    import torch

    from persona_lib import io
    from persona_lib.chat import generate_replies
    from persona_lib.dataset import load_heldout
    from persona_lib.models import load_model
    from persona_lib.spec import load_spec, system_prompt

    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = load_heldout(args.persona)[: args.prompts]
    conversations = [p["messages"] for p in prompts]
    sp = system_prompt(load_spec(args.persona)) if args.system_prompt else None
    model, tokenizer = load_model(args.model)
    kw = dict(system_prompt=sp, max_new_tokens=args.max_new_tokens, progress=True)
    generate_replies(model, tokenizer, conversations[:2], system_prompt=sp, max_new_tokens=4, progress=False)  # warm-up

    start = time.perf_counter()
    single = generate_replies(model, tokenizer, conversations, batch_size=1, desc="one at a time", **kw)
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = generate_replies(model, tokenizer, conversations, batch_size=args.batch_size, desc="batched", **kw)
    batched_s = time.perf_counter() - start

    tokens = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in single]
    same = [a == b for a, b in zip(single, batched)]
    differing = [{"id": p["id"], "first_difference_at_char": first_difference(a, b), "one_at_a_time": a, "batched": b}
                 for p, a, b, s in zip(prompts, single, batched, same) if not s]
    speedup = single_s / batched_s
    identical = sum(same) / len(same)
    result = {
        "model": args.model, "persona": args.persona, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "system_prompt": bool(sp), "greedy": True,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "seconds_one_at_a_time": single_s, "seconds_batched": batched_s, "speedup": speedup,
        "reply_tokens_one_at_a_time": sum(tokens),
        "tokens_per_second_one_at_a_time": sum(tokens) / single_s, "identical_share": identical,
        "goal": {"speedup_at_least": 3.0, "identical_share_at_least": 0.95},
        "met": {"speedup": speedup >= 3.0, "identical": identical >= 0.95},
        "differing": differing,
        "command": "python bench/bench_batched_generation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    io.write_json(args.out, result)
    print(f"one at a time {single_s:.1f} s, batched (batch {args.batch_size}) {batched_s:.1f} s: {speedup:.2f}x; "
          f"identical output on {sum(same)}/{len(same)} prompts ({identical:.0%})")
    for d in differing:
        print(f"  differs: {d['id']} from character {d['first_difference_at_char']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
