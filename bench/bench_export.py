"""Export of a TaskMaster adapter on the embedded default, measured step by step in one run.

- time and size of each step: merge (adapter into SmolLM2-135M, fp32 HF folder), f16 GGUF
  (llama.cpp's convert_hf_to_gguf.py), Q4_K_M and Q8_0 (llama_model_quantize), and the GGUF
  LoRA (convert_lora_to_gguf.py), with the tensor types each GGUF really holds;
- export parity on the TaskMaster held-out prompts (every kind, at least 40): greedy replies of
  the merged HF model, the f16, Q4_K_M and Q8_0 GGUFs; per GGUF the paired bootstrap interval
  of the per-prompt signature-phrase difference from HF (goal: it contains 0 for f16 and
  Q4_K_M), the greedy token agreement with HF and the share of identical replies. The base
  model's signature rate on the same prompts says how much voice there was to lose.

The adapter: --adapter, or TaskMaster's adapter trained here with persona_lib.train's CPU
preset (reused from --runs when already there: lesson 4's folder works).

    python bench/bench_export.py                       # full run: ~20 min training + ~10 min export and parity
    python bench/bench_export.py --adapter runs/taskmaster/adapter   # reuse a trained adapter
    python bench/bench_export.py --model tiny --prompts 4 --max-new-tokens 16 \\
        --results /tmp/export_small.json              # a plumbing check, a few minutes

The machine's load average is recorded at the start and the end: on a shared box, timings
are not comparable. Writes bench/results/export.json and export_rows.jsonl beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from persona_lib.io import write_json, write_jsonl

RESULTS = Path(__file__).parent / "results"
MIN_PROMPTS = 40  # what the issue asks for the parity intervals


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded (the benchmark's model) or tiny (plumbing)")
    parser.add_argument("--adapter", default="", help="a trained adapter folder; empty: train TaskMaster's in --runs")
    parser.add_argument("--runs", default="", help="run folder root for the trained adapter (default: a temporary one)")
    parser.add_argument("--prompts", type=int, default=0,
                        help=f"held-out prompts (0: all of them, at least {MIN_PROMPTS})")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--boot", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--results", default=str(RESULTS / "export.json"))
    args = parser.parse_args(argv)

    from persona_lib import adapters, multi, train
    from persona_lib.dataset import load_heldout

    load_start = load_average()
    prompts = load_heldout("taskmaster")
    prompts = prompts[: args.prompts] if args.prompts else prompts
    if args.model != "tiny" and len(prompts) < MIN_PROMPTS:
        print(f"warning: only {len(prompts)} held-out prompts; the issue asks for at least {MIN_PROMPTS}")
    runs = Path(args.runs or tempfile.mkdtemp(prefix="bench-export-runs-"))
    if args.adapter:
        adapter, training = Path(args.adapter), {"folder": args.adapter, "trained": False, "train_s": None}
    else:
        training = multi.ensure_adapter(runs / "taskmaster" / "adapter", train.preset(args.model),
                                        multi.training_records("taskmaster"))
        adapter = Path(training["folder"])  # beside the asked-for folder when that holds another adapter
    if not adapters.trained_on(adapter, args.model):
        raise SystemExit(f"{adapter} was not trained on {args.model}; pass --model or another --adapter")

    out = Path(tempfile.mkdtemp(prefix="bench-export-"))  # ~1 GB for the embedded model; removed at the end
    try:
        results, rows = measure(args, adapter, training, prompts, out, load_start)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    results["command"] = " ".join(["python", "bench/bench_export.py", *(argv if argv is not None else sys.argv[1:])])
    results_path = Path(args.results)
    write_json(results_path, results)
    write_jsonl(results_path.with_name(results_path.stem + "_rows.jsonl"), rows)
    report(results, results_path)
    return 0


def measure(args, adapter: Path, training: dict, prompts: list[dict], out: Path, load_start: list[float]):
    from persona_lib import export as ex
    from persona_lib import parity
    from persona_lib.chat import generate_replies
    from persona_lib.metrics import bootstrap_ci
    from persona_lib.models import load_model
    from persona_lib.spec import load_spec

    spec = load_spec("taskmaster")
    steps, files = {}, {}
    plan = [
        ("merge", out / "merged", lambda p: ex.merge_adapter(adapter, p, dtype="float32")),
        ("f16", out / "taskmaster.f16.gguf", lambda p: ex.convert_to_gguf(files["merge"], p)),
        ("Q4_K_M", out / "taskmaster.Q4_K_M.gguf", lambda p: ex.quantize_gguf(files["f16"], p, "Q4_K_M")),
        ("Q8_0", out / "taskmaster.Q8_0.gguf", lambda p: ex.quantize_gguf(files["f16"], p, "Q8_0")),
        ("lora", out / "taskmaster.lora.gguf", lambda p: ex.convert_lora(adapter, p)),
    ]
    for name, path, make in plan:
        start = time.perf_counter()
        files[name] = make(path)
        steps[name] = {"seconds": round(time.perf_counter() - start, 2), "bytes": ex.size_of(path)}
        if path.suffix == ".gguf" and name != "lora":
            steps[name]["tensor_types"] = ex.tensor_types(path)
        print(f"[{name}] {steps[name]['seconds']:.1f} s, {steps[name]['bytes'] / 1e6:.1f} MB")

    conversations = [p["messages"] for p in prompts]
    parity = parity.export_parity(files["merge"], {k: files[k] for k in ("f16", "Q4_K_M", "Q8_0")}, conversations,
                              spec.signature_vocabulary, ids=[p["id"] for p in prompts],
                              max_new_tokens=args.max_new_tokens, n_boot=args.boot)
    rows = parity.pop("rows")

    base_model, tokenizer = load_model(args.model)
    base_replies = generate_replies(base_model, tokenizer, conversations, max_new_tokens=args.max_new_tokens,
                                    desc="base model, no adapter")
    base_rate = bootstrap_ci(parity.signature_flags(base_replies, spec.signature_vocabulary), n_boot=args.boot)
    for row, reply in zip(rows, base_replies):
        row["base_reply"] = reply

    systems = parity["systems"]
    goal = {name: systems[name]["signature_diff_vs_hf"]["low"] <= 0 <= systems[name]["signature_diff_vs_hf"]["high"]
            for name in ("f16", "Q4_K_M", "Q8_0")}
    results = {
        "what": "export of a TaskMaster adapter: step times and sizes, tensor types, export parity",
        "model": args.model,
        "adapter": {"folder": str(adapter), "trained_here": training["trained"], "train_s": training["train_s"]},
        "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "steps": steps,
        "parity": systems,
        "base_signature_rate": base_rate,
        "goal_interval_contains_0": goal,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "llama_cpp_python": ex.llama_cpp_version()},
        "load_average": {"start": load_start, "end": load_average()},
    }
    return results, rows


def report(results: dict, results_path: Path) -> None:
    steps, systems = results["steps"], results["parity"]
    print(f"\n{results['prompts']} prompts, {results['max_new_tokens']} greedy tokens; "
          f"base signature rate {results['base_signature_rate']['mean']:.2f}")
    print(f"{'system':>7} {'size MB':>8} {'signature':>10} {'diff vs HF [95% CI]':>24} {'agreement':>10} "
          f"{'identical':>10}")
    print(f"{'hf':>7} {steps['merge']['bytes'] / 1e6:>8.1f} {systems['hf']['signature_rate']['mean']:>10.2f}")
    for name in ("f16", "Q4_K_M", "Q8_0"):
        s, d = systems[name], systems[name]["signature_diff_vs_hf"]
        print(f"{name:>7} {steps[name]['bytes'] / 1e6:>8.1f} {s['signature_rate']['mean']:>10.2f} "
              f"{d['diff']:>+8.3f} [{d['low']:+.3f}, {d['high']:+.3f}] {s['token_agreement']:>10.2f} "
              f"{s['identical_replies']:>10.2f}")
    print(f"goal (interval contains 0): {results['goal_interval_contains_0']}\nwrote {results_path}")


if __name__ == "__main__":
    sys.exit(main())
