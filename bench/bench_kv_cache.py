"""Static versus dynamic key/value cache for greedy generation on a CPU, side by side in one run.

`chat.generate_replies` (and export's parity check) pass `chat.cache_kwargs`: on a CPU, a
static cache made for the call when the padded prompt is at least as long as the reply, the
default dynamic cache otherwise. This measures both caches on both kinds of prompt, so the
rule can be checked: the held-out prompts with the persona's system prompt (285-313 tokens
for TaskMaster: the baseline's and the quick eval's "base + prompt") and without it (46-74
tokens: "tuned" and the knowledge questions). Each cell alternates dynamic and static
`--rounds` times in the same process on the same model (the host's speed drifts during the
day; alternating keeps a drift from landing on one side), and checks the replies are equal.

    python bench/bench_kv_cache.py              # 24 prompts x 120 tokens, 3 rounds: about 10 minutes on 2 cores

Writes bench/results/kv_cache.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="embedded (default), tiny, or a model folder")
    parser.add_argument("--persona", default="taskmaster")
    parser.add_argument("--prompts", type=int, default=24, help="held-out prompts (the quick eval's 24)")
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=48, help="the quick eval's batch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "kv_cache.json"))
    args = parser.parse_args(argv)

    import torch

    from persona_lib import chat, io
    from persona_lib.dataset import load_heldout
    from persona_lib.models import load_model
    from persona_lib.spec import load_spec, system_prompt

    model, tokenizer = load_model(args.model)
    spec = load_spec(args.persona)
    conversations = [p["messages"] for p in load_heldout(spec.slug)[: args.prompts]]
    rule = chat.cache_kwargs
    # each cache forced, whatever the rule would pick
    forced = {"dynamic": lambda model, prompt_len, max_new_tokens: {},
              "static": lambda model, prompt_len, max_new_tokens: chat.static_cache(model, prompt_len + max_new_tokens)}

    cells = {}
    for name, sp in (("with system prompt", system_prompt(spec)), ("without system prompt", None)):
        texts = [tokenizer.apply_chat_template(chat.with_system(c, sp), tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        seconds: dict[str, list[float]] = {"dynamic": [], "static": []}
        replies = {}
        try:
            for _ in range(args.rounds):
                for kind in ("dynamic", "static"):
                    chat.cache_kwargs = forced[kind]
                    start = time.perf_counter()
                    replies[kind] = chat.generate_replies(model, tokenizer, conversations, system_prompt=sp,
                                                          max_new_tokens=args.max_new_tokens,
                                                          batch_size=args.batch_size, progress=False)
                    seconds[kind].append(time.perf_counter() - start)
                    print(f"{name:<22} {kind:<8} {seconds[kind][-1]:6.1f} s", flush=True)
        finally:
            chat.cache_kwargs = rule
        median = {k: statistics.median(v) for k, v in seconds.items()}
        rule_picks = "static" if rule(model, max(lengths), args.max_new_tokens) else "dynamic"
        cells[name] = {
            "prompt_tokens": {"min": min(lengths), "max": max(lengths)},
            "seconds": {k: [round(s, 2) for s in v] for k, v in seconds.items()},
            "median_s": {k: round(v, 2) for k, v in median.items()},
            "dynamic_over_static": round(median["dynamic"] / median["static"], 3),
            "same_replies": sum(a == b for a, b in zip(replies["dynamic"], replies["static"])),
            "rule_picks": rule_picks,
            "rule_picks_faster": rule_picks == min(median, key=median.get),
        }

    report = {
        "what": "static vs dynamic KV cache, greedy generate on CPU, alternating in one process",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average_end": list(os.getloadavg())},
        "config": vars(args) | {"prompts_used": len(conversations)},
        "cells": cells,
    }
    io.write_json(Path(args.out), report)
    for name, cell in cells.items():
        print(f"{name:<22} prompt {cell['prompt_tokens']['min']}-{cell['prompt_tokens']['max']} tokens: "
              f"dynamic {cell['median_s']['dynamic']:.1f} s, static {cell['median_s']['static']:.1f} s "
              f"({cell['dynamic_over_static']:.2f}x), same replies {cell['same_replies']}/{len(conversations)}, "
              f"the rule picks {cell['rule_picks']} ({'faster' if cell['rule_picks_faster'] else 'SLOWER'})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
