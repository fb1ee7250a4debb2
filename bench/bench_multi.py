"""Multi-persona designs on the embedded default, measured side by side in one run.

Trains, from scratch in a fresh run folder, one LoRA adapter per persona (TaskMaster,
Captain Codebeard, Zen Coder) and one persona-conditioned adapter on the same conversations
(each with `You are <name>.` as system prompt), all with `TrainConfig.cpu()` on the embedded
SmolLM2-135M (2 epochs, but at least --min-steps updates per persona, or that persona's
--persona-steps; the conditioned run sees the same examples and trains the separate runs'
minimums together, so the designs are compared at an equal budget). Then, with all four
adapters on one base model:

- persona bleed for both designs: every persona answers the same pooled held-out prompts
  (--prompts-per-persona of each persona), the persona classifier (persona_lib.metrics)
  attributes each reply; diagonal accuracy per persona, beside the classifier's own
  cross-validated matrix on reference replies (its ceiling). Goal: >= 0.8 per persona for
  separate adapters, read against that ceiling;
- training time of each design (the adapters' manifests, and wall time with model loading);
- adapter switch latency (median `set_adapter`) versus reloading the base model with the
  other adapter from disk (median of --reloads; the files are in the page cache by then, so
  this is the warm reload, the cheapest one), in the same process;
- the blend curve TaskMaster -> Captain Codebeard at weights 0, 0.3, 0.5, 0.7, 1.

    python bench/bench_multi.py                  # the full run, about 2 hours on a quiet 2-core CPU
    python bench/bench_multi.py --train-only     # lesson 6's four trainings only -> multi_training.json
    python bench/bench_multi.py --train-only --separate-only --runs DIR   # the three persona adapters;
                                                 # the same command without --separate-only then adds the fourth
    python bench/bench_multi.py --records-per-persona 8 --max-steps 2 --prompts-per-persona 2 \\
        --max-new-tokens 24 --reloads 1 --results /tmp/multi_small.json   # a plumbing check, minutes

Training time compares the designs only without --max-steps (a step cap gives every run the
same number of steps, so the conditioned run would see a third of the data). The machine's
load average is recorded at the start and the end: on a shared box, timings are not comparable.

Writes bench/results/multi.json, with multi_bleed.png and multi_blend.png beside it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from persona_lib.io import read_json, write_json

RESULTS = Path(__file__).parent / "results"
GOAL = 0.8  # diagonal accuracy per persona the issue asks of separate adapters


def goal_flags(diagonal: dict[str, float], ceiling: dict[str, float]) -> dict:
    """Separate adapters against the goal: raw (diagonal >= GOAL), and read against the
    classifier's ceiling as the goal is meant (diagonal >= GOAL, or >= what the classifier
    attains on that persona's own reference replies when that is below GOAL)."""
    return {"separate_diagonal_at_least_goal": {s: d >= GOAL for s, d in diagonal.items()},
            "separate_meets_goal_against_ceiling": {s: d >= min(GOAL, ceiling[s]) for s, d in diagonal.items()}}


def diagonal_intervals(matrix: dict) -> dict[str, list]:
    """{persona: [low, high]} of a bleed matrix's diagonal cells (multi.cell_intervals)."""
    return {row: matrix["intervals"][i][matrix["labels"].index(row)] for i, row in enumerate(matrix["rows"])
            if row in matrix["labels"]}


def earlier_timings(results: Path, runs: Path, cpu_flags: dict) -> dict:
    """The per-adapter timings that `results` already holds from an earlier run in the same `runs`
    folder on a CPU with the same instruction sets ({} when there are none). A training split over
    two runs (--separate-only, then the same command without it) then reports all four times in
    one file; an adapter reused from elsewhere stays "reused, not timed"."""
    if not results.is_file():
        return {}
    previous = read_json(results)
    if previous.get("runs") != str(runs) or previous.get("machine", {}).get("cpu_flags") != cpu_flags:
        return {}
    timed_there = {k: v for k, v in previous.get("training", {}).get("per_adapter", {}).items() if v.get("trained")}
    return {**timed_there, "_run": previous} if timed_there else {}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main(argv=None) -> int:
    from persona_lib import (
        multi,  # light: torch and transformers load inside its functions
    )

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded (the benchmark's model) or tiny (plumbing)")
    parser.add_argument("--records-per-persona", type=int, default=0, help="0: every training record")
    parser.add_argument("--max-steps", type=int, default=-1, help="-1: TrainConfig's 2 epochs; >0 caps each run")
    parser.add_argument("--min-steps", type=int, default=multi.MultiConfig.min_steps,
                        help="updates per persona at least (0: 2 epochs decide); the conditioned run gets the sum")
    parser.add_argument("--persona-steps", nargs="*", metavar="SLUG=N",
                        default=[f"{k}={v}" for k, v in multi.MultiConfig().min_steps_by_persona.items()],
                        help="personas that train more than --min-steps (default: %(default)s)")
    parser.add_argument("--prompts-per-persona", type=int, default=10, help="pooled held-out prompts per persona")
    parser.add_argument("--blend-prompts-per-persona", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=120)
    parser.add_argument("--switch-repeats", type=int, default=500, help="adapter switches timed (median)")
    parser.add_argument("--reloads", type=int, default=3, help="base + adapter reloads timed (median)")
    parser.add_argument("--runs", default="", help="run folder root (default: a fresh temporary folder; "
                                                   "adapters already there are reused: not timed, unless "
                                                   "--results holds their times from an earlier run there)")
    parser.add_argument("--results", default="", help="default: bench/results/multi.json, "
                        "or multi_training.json with --train-only")
    parser.add_argument("--train-only", action="store_true",
                        help="time lesson 6's four trainings and stop "
                             "(68 minutes on a quiet 2-core CPU, multi_training.json)")
    parser.add_argument("--separate-only", action="store_true",
                        help="with --train-only: the three persona adapters, not the conditioned one (about half "
                             "the time; a later run with the same --runs reuses them and times the conditioned one)")
    parser.add_argument("--keep-memory", action="store_true",
                        help="train with TrainConfig.cpu_keep_memory on (a trial kept off by default): "
                             "each adapter's peak_rss_gb shows whether the kept memory piles up")
    args = parser.parse_args(argv)
    if args.separate_only and not args.train_only:
        parser.error("--separate-only goes with --train-only")

    import torch

    from persona_lib import plots
    from persona_lib.metrics import train_persona_classifier

    try:
        persona_steps = {k: int(v) for k, v in (item.split("=", 1) for item in args.persona_steps)}
    except ValueError:
        parser.error(f"--persona-steps takes SLUG=N pairs, got {args.persona_steps}")
    config = multi.MultiConfig(model=args.model, records_per_persona=args.records_per_persona,
                               max_steps=args.max_steps, min_steps=args.min_steps,
                               min_steps_by_persona=persona_steps, prompts_per_persona=args.prompts_per_persona,
                               blend_prompts_per_persona=args.blend_prompts_per_persona,
                               max_new_tokens=args.max_new_tokens)
    # bench/ is on sys.path when this file runs as a script
    from bench_train_cpu import cpu_flags, matmul_rates, peak_rss_gb, rates_before_after

    from persona_lib.llama_build import cpu_model

    runs = Path(args.runs or tempfile.mkdtemp(prefix="bench_multi_"))
    results = Path(args.results or RESULTS / ("multi_training.json" if args.train_only else "multi.json"))
    report: dict = {
        "what": "separate persona adapters vs one persona-conditioned adapter on one base model",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_flags": cpu_flags(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_start": load_average()},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(config).items()},
        "runs": str(runs),
    }

    def train_config(slug=None, conditioned=False):
        chosen = config.train_config(slug, conditioned=conditioned)
        chosen.cpu_keep_memory = args.keep_memory or chosen.cpu_keep_memory
        return chosen

    report["train_config"] = {slug: train_config(slug).to_dict() for slug in config.personas}
    conditioned_config = train_config(conditioned=True)
    report["conditioned_train_config"] = conditioned_config.to_dict()

    # ---- training, each design from scratch. This machine's matmul rates are read before and after
    # each run (bench_train_cpu's 2048 x 2048 reading, 4 s): a shared host can be slower for a while,
    # and the rates say whether a training time was taken on a machine at its usual speed.
    earlier = earlier_timings(results, runs, report["machine"]["cpu_flags"])

    def train_timed(name, folder, train_config, records) -> dict:
        before = matmul_rates()
        t, wall = timed(lambda: multi.ensure_adapter(folder, train_config, records))
        after = matmul_rates()
        if (not t["trained"] and earlier.get(name, {}).get("folder") == str(t["folder"])
                and earlier[name].get("train_s") == t["train_s"]):  # the adapter those timings were taken of
            return {**earlier[name], "timed_in_earlier_run": True}
        manifest = read_json(Path(t["folder"]) / "manifest.json")
        return {**t, "wall_s": round(wall, 2), "tokens_per_second": manifest["throughput"]["tokens_per_second"],
                "tokens_per_second_in_steps": manifest["throughput"].get("tokens_per_second_in_steps"),
                **{k: manifest["timings"].get(k) for k in ("evaluate_s", "checkpoint_s")},
                # the process's peak resident memory so far (the runs share one process): it shows
                # whether kept freed memory (trainer.kept_memory) piles up over a long run
                "peak_rss_gb": peak_rss_gb(),
                "matmul_gflops": rates_before_after(before, after)}

    training = {}
    for slug in config.personas:
        training[slug] = train_timed(slug, multi.adapter_dir(slug, runs), train_config(slug),
                                     config.records(slug))
    if not args.separate_only:
        mixed = multi.conditioned_records({slug: config.records(slug) for slug in config.personas})
        training[multi.CONDITIONED] = train_timed(multi.CONDITIONED, multi.conditioned_dir(runs),
                                                  conditioned_config, mixed)
    separate_s = sum(training[s]["train_s"] for s in config.personas)
    report["training"] = {
        "per_adapter": training,
        "separate_total_train_s": round(separate_s, 2),
        "separate_total_wall_s": round(sum(training[s]["wall_s"] for s in config.personas), 2),
        "reused_not_timed": [k for k, v in training.items() if not v["trained"]],
        "timed_in_earlier_run": [k for k, v in training.items() if v.get("timed_in_earlier_run")],
    }
    if report["training"]["timed_in_earlier_run"]:
        report["earlier_run"] = earlier["_run"].get("earlier_run") or {k: earlier["_run"][k]
                                                                       for k in ("command", "machine")}
    if not args.separate_only:
        conditioned_s = training[multi.CONDITIONED]["train_s"]
        report["training"].update({
            "conditioned_train_s": conditioned_s,
            "conditioned_over_separate": round(conditioned_s / separate_s, 3),
            "all_four_train_s": round(separate_s + conditioned_s, 2),
            "all_four_wall_s": round(sum(t["wall_s"] for t in training.values()), 2),
        })
    if args.train_only:
        report["machine"]["load_average_end"] = load_average()
        write_json(results, report)
        if args.separate_only:
            print(f"lesson 6's three persona trainings: {report['training']['separate_total_wall_s'] / 60:.1f} "
                  f"minutes ({separate_s:.0f} s training) -> {results}")
        else:
            print(f"lesson 6's four trainings: {report['training']['all_four_wall_s'] / 60:.1f} minutes "
                  f"(separate {separate_s:.0f} s, conditioned {conditioned_s:.0f} s) -> {results}")
        return 0

    # ---- all four adapters on one base
    adapters = {name: t["folder"] for name, t in training.items()}
    (model, tokenizer), load_s = timed(lambda: multi.load_personas(config.model, adapters))
    classifier = train_persona_classifier()
    prompts = multi.bleed_prompts(config.personas, config.prompts_per_persona)
    conversations = [p["messages"] for p in prompts]
    gen = dict(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
    bleed = {"ceiling": multi.ceiling_matrix(classifier, config.personas)}
    generation_s = {}
    replies = {}
    for design in ("separate", "conditioned"):
        replies[design], generation_s[design] = timed(
            lambda: multi.design_replies(model, tokenizer, conversations, config.personas, design, **gen))
        bleed[design] = multi.bleed_matrix(replies[design], classifier)
    plots.persona_bleed_matrices({"classifier on reference replies (ceiling)": bleed["ceiling"],
                                  "separate adapters": bleed["separate"],
                                  "one conditioned adapter": bleed["conditioned"]},
                                 path=results.with_name(results.stem + "_bleed.png"))
    ceiling = bleed["ceiling"]["diagonal"]
    report["bleed"] = {
        "prompts": len(prompts),
        "prompt_ids": [p["id"] for p in prompts],
        "classifier_heldout": classifier.heldout,
        "diagonal": {k: bleed[k]["diagonal"] for k in ("ceiling", "separate", "conditioned")},
        "diagonal_intervals": {k: diagonal_intervals(bleed[k]) for k in ("ceiling", "separate", "conditioned")},
        "mean_diagonal": {k: round(bleed[k]["mean_diagonal"], 4) for k in ("ceiling", "separate", "conditioned")},
        "diagonal_over_ceiling": {k: {s: (bleed[k]["diagonal"][s] / ceiling[s] if ceiling[s] else None)
                                      for s in config.personas} for k in ("separate", "conditioned")},
        **goal_flags(bleed["separate"]["diagonal"], ceiling),
        "goal": GOAL,
        "matrices": bleed,
        "generation_s": {k: round(v, 2) for k, v in generation_s.items()},
        "replies": replies,
    }

    # ---- switch versus reload, same process, same adapters
    switch_s = multi.switch_seconds(model, list(config.personas), repeats=args.switch_repeats)
    reloads = [multi.reload_seconds(config.model, adapters[config.personas[-1]]) for _ in range(args.reloads)]
    reload_s = statistics.median(reloads)
    report["switching"] = {"switch_median_s": switch_s, "switch_repeats": args.switch_repeats,
                           "reload_median_s": round(reload_s, 3), "reload_all_s": [round(r, 3) for r in reloads],
                           "reload_over_switch": round(reload_s / switch_s), "load_all_four_s": round(load_s, 2)}

    # ---- blend curve
    a, b = config.blend_pair
    blend_set = [p["messages"] for p in multi.bleed_prompts(config.personas, config.blend_prompts_per_persona)]
    curve, blend_s = timed(lambda: multi.blend_curve(model, tokenizer, a, b, blend_set, classifier,
                                                     weights=config.blend_weights, combination=config.combination,
                                                     **gen))
    plots.blend_curve_plot(curve, path=results.with_name(results.stem + "_blend.png"))
    report["blend"] = {**curve, "seconds": round(blend_s, 2)}
    report["machine"]["load_average_end"] = load_average()
    write_json(results, report)

    print(f"\n{'persona':<18} {'ceiling':>8} {'separate':>9} {'conditioned':>12}   (diagonal accuracy, goal {GOAL})")
    for s in config.personas:
        print(f"{s:<18} {ceiling[s]:>8.2f} {bleed['separate']['diagonal'][s]:>9.2f} "
              f"{bleed['conditioned']['diagonal'][s]:>12.2f}")
    md = report["bleed"]["mean_diagonal"]
    print(f"{'mean':<18} {md['ceiling']:>8.2f} {md['separate']:>9.2f} {md['conditioned']:>12.2f}")
    print(f"training: separate {separate_s:.0f} s (3 runs), conditioned {training[multi.CONDITIONED]['train_s']:.0f} s"
          + (f"  [reused, not timed: {report['training']['reused_not_timed']}]"
             if report["training"]["reused_not_timed"] else ""))
    print(f"switch {switch_s * 1e3:.2f} ms (median of {args.switch_repeats}) vs reload {reload_s:.2f} s "
          f"(median of {args.reloads}): {reload_s / switch_s:,.0f}x")
    p_b = ", ".join(f"{r['p_b']:.2f}" for r in curve["rows"])
    print(f"blend {a} -> {b}: P({b}) = {p_b} ({curve['trend']})")
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
