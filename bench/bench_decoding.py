"""Decoding settings for a small model: greedy against repetition guards, measured on one adapter.

The embedded SmolLM2-135M loops ("Fundraiser Gala: 418 Mercer St" five times), before tuning and
after. transformers offers two guards: a repetition penalty (every token already in the prompt or
the reply scores lower) and no-repeat n-grams (no token n-gram twice). Both also see the prompt,
so they can push a persona away from the very phrases its system prompt shows. This benchmark
measures each setting against plain greedy decoding on the same prompts, for two systems:

- ``tuned``: the adapter (default: `persona run`'s TaskMaster adapter), no system prompt;
- ``base_prompted``: the same base model, adapter off, with the persona's system prompt;

on the measures lesson 5 uses: the loop rate (`metrics.loops`: a word trigram three times in one
reply), the persona classifier's probability, the signature-phrase rate, distinct-2 over the
replies, knowledge recall (tuned, no system prompt) and the honesty probes (tuned); and beside
them the cost a guard can have that no persona measure sees, the share of replies that echo a
word of the prompt misspelt (`metrics.misspelt_echoes`: "jerseals" for "jerseys"). Every
difference from greedy is paired by prompt, with a bootstrap interval.

The rule that picks the chat default (`choose`): among the settings that lower the tuned loop
rate (interval below 0) without a measured loss on the persona probability, the signature rate or
knowledge recall of either system (no interval entirely below 0), the one with the lowest loop
rate over both systems (lessons 1 and 4 show both), and of equals the mildest (SETTINGS lists
each guard from mild to strong); greedy when none qualifies. `persona_lib.chat.CHAT` must name the setting chosen here
(a test reads this JSON).

    persona run taskmaster                          # the adapter this measures (runs/taskmaster/adapter)
    python bench/bench_decoding.py                  # -> bench/results/decoding.json
    python bench/bench_decoding.py --rescore        # the misspelt echoes of the replies it holds, no generation
    python bench/bench_decoding.py --model tiny --adapter /tmp/tiny_adapter --prompts 2 --questions 2 \\
        --max-new-tokens 8 --results /tmp/decoding.json      # a plumbing check
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from persona_lib import io
from persona_lib.llama_build import cpu_model

RESULTS = Path(__file__).parent / "results" / "decoding.json"

SETTINGS = {
    "greedy": {},
    "penalty_1.1": {"repetition_penalty": 1.1},
    "penalty_1.2": {"repetition_penalty": 1.2},
    "penalty_1.3": {"repetition_penalty": 1.3},
    "no_repeat_3": {"no_repeat_ngram_size": 3},
    "no_repeat_4": {"no_repeat_ngram_size": 4},
    "penalty_1.1_no_repeat_4": {"repetition_penalty": 1.1, "no_repeat_ngram_size": 4},
}
# Each guarded measure: (the per-prompt values' key, the systems it is read on). Higher is better.
GUARDED = {"persona_probability": ("tuned", "base_prompted"), "signature": ("tuned", "base_prompted"),
           "knowledge": ("tuned",)}


def echo_measures(prompts: list[dict], replies: list[str], known: set[str]) -> tuple[list[float], dict]:
    """Per reply 1.0 if it echoes a word of its prompt misspelt (`metrics.misspelt_echoes`), and a
    system's two entries: the rate with its interval and the (reply word, prompt word) pairs."""
    from persona_lib.metrics import bootstrap_ci, misspelt_echoes

    found = [misspelt_echoes(p["messages"][-1]["content"], r, known) for p, r in zip(prompts, replies)]
    per = [float(bool(f)) for f in found]
    return per, {"misspelt_echo_rate": bootstrap_ci(per),
                 "misspelt_echoes": [[w, asked] for f in found for w, asked in f]}


def measure(system_replies: dict, spec, classifier, questions, knowledge_answers, probes, probe_replies, *,
            prompts: list[dict], known: set[str]) -> dict:
    from persona_lib.metrics import bootstrap_ci, diversity, honesty_measures, knowledge_recall, loops, persona_measures

    out = {}
    for system, replies in system_replies.items():
        m = persona_measures(replies, spec, classifier=classifier)
        per = m["per_reply"]
        per["loops"] = [float(loops(r)) for r in replies]
        per["misspelt_echo"], echoes = echo_measures(prompts, replies, known)
        out[system] = {
            "loop_rate": bootstrap_ci(per["loops"]),
            **echoes,
            "persona_probability": m.get("persona_probability"),
            "signature_rate": m["signature_rate"],
            "distinct_2": diversity(replies)["distinct_2"],
            "length_words": m["length_words"],
            "per_reply": {k: per[k] for k in ("loops", "signature", "persona_probability", "misspelt_echo")
                          if k in per},
            "replies": replies,
        }
    recall = knowledge_recall(questions, knowledge_answers)
    out["tuned"]["knowledge"] = {"recall_percent": recall["recall_percent"], "facts": recall["facts"],
                                 "per_question": recall["per_question"]}
    if probes:
        honesty = honesty_measures(probes, probe_replies)
        out["tuned"]["honesty"] = {k: honesty[k] for k in ("admits_ai", "claims_action")}
    return out


def differences(rows: dict) -> dict:
    """Each setting minus greedy, paired by prompt (question for knowledge)."""
    from persona_lib.metrics import paired_bootstrap, recall_difference

    greedy = rows["greedy"]
    out = {}
    for name, row in rows.items():
        if name == "greedy":
            continue
        d = {}
        for system in ("tuned", "base_prompted"):
            a, b = greedy[system]["per_reply"], row[system]["per_reply"]
            for key in ("loops", "signature", "persona_probability", "misspelt_echo"):
                if key in a and key in b:
                    d[f"{system}.{key}"] = paired_bootstrap(a[key], b[key])
        d["tuned.knowledge"] = recall_difference(greedy["tuned"]["knowledge"], row["tuned"]["knowledge"])
        out[name] = d
    return out


def choose(diffs: dict, rows: dict) -> tuple[str, list[str]]:
    """The rule in the module docstring; returns (setting, one line of reasons per setting)."""
    reasons, fit = [], []
    for name, d in diffs.items():
        lower = d["tuned.loops"]["high"] < 0
        losses = [f"{system}.{key}" for key, systems in GUARDED.items() for system in systems
                  if f"{system}.{key}" in d and d[f"{system}.{key}"]["high"] < 0]
        ok = lower and not losses
        reasons.append(f"{name}: tuned loops {d['tuned.loops']['diff']:+.2f} "
                       f"[{d['tuned.loops']['low']:+.2f}, {d['tuned.loops']['high']:+.2f}]"
                       + (f"; measured losses: {', '.join(losses)}" if losses else "; no measured loss")
                       + ("" if lower else "; loops not lowered beyond noise") + (" -> qualifies" if ok else ""))
        if ok:
            fit.append(name)
    if not fit:
        return "greedy", reasons
    order = list(SETTINGS)
    return min(fit, key=lambda n: (round(rows[n]["tuned"]["loop_rate"]["mean"] + rows[n]["base_prompted"]["loop_rate"]
                                         ["mean"], 6), order.index(n))), reasons


def rescore(path: Path, model_id: str) -> int:
    """Measure the misspelt echoes of the replies a run stored, on the same prompts, and the
    paired differences from greedy again; the rule's choice is recomputed and must not move
    (the echo rate is reported beside it, not part of it)."""
    from persona_lib.dataset import heldout_prompts
    from persona_lib.metrics import known_words
    from persona_lib.models import load_tokenizer
    from persona_lib.spec import load_spec

    report = io.read_json(path)
    prompts = heldout_prompts(load_spec(report["persona"]), report["prompts"])
    known = known_words(load_tokenizer(model_id))
    rows = report["settings"]
    for name, row in rows.items():
        for system in ("tuned", "base_prompted"):
            row[system]["per_reply"]["misspelt_echo"], echoes = echo_measures(prompts, row[system]["replies"], known)
            row[system].update(echoes)
        print(f"{name}: replies with a misspelt echo: tuned {row['tuned']['misspelt_echo_rate']['mean']:.2f}, "
              f"base+prompt {row['base_prompted']['misspelt_echo_rate']['mean']:.2f} "
              f"{row['tuned']['misspelt_echoes'] + row['base_prompted']['misspelt_echoes']}")
    report["vs_greedy"] = differences(rows)
    chosen, _ = choose(report["vs_greedy"], rows)
    if chosen != report["chosen"]:
        raise SystemExit(f"the rule now chooses {chosen}, the run chose {report['chosen']}: run the benchmark again")
    report["rescored"] = "python bench/bench_decoding.py --rescore"
    io.write_json(path, report)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", default="runs/taskmaster/adapter", help="the tuned adapter to measure")
    parser.add_argument("--persona", default="taskmaster", help="the adapter's persona (its spec and prompts)")
    parser.add_argument("--model", default="", help="base model (default: the adapter's own)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of: {', '.join(SETTINGS)}")
    parser.add_argument("--prompts", type=int, default=40, help="held-out ordinary prompts (all if fewer)")
    parser.add_argument("--questions", type=int, default=0, help="knowledge questions (0: all)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="reply length (the evaluation's)")
    parser.add_argument("--knowledge-max-new-tokens", type=int, default=200, help="answer length (the evaluation's)")
    parser.add_argument("--results", default=str(RESULTS), help="JSON path")
    parser.add_argument("--rescore", action="store_true",
                        help="no generation: add the misspelt-echo measure to the replies already in --results "
                             "(the tokenizer of --model, default the embedded model's)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.rescore:
        return rescore(Path(args.results), args.model or "embedded")

    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or "greedy" not in names:
        parser.error(f"--settings must include greedy and name only {', '.join(SETTINGS)}; got {unknown or names}")
    if not Path(args.adapter, "adapter_config.json").is_file():
        parser.error(f"no adapter in {args.adapter}: run `persona run {args.persona}` first, or pass --adapter")

    from persona_lib import adapters
    from persona_lib.chat import Decoding, generate_replies
    from persona_lib.dataset import heldout_prompts, load_honesty, load_knowledge
    from persona_lib.metrics import known_words, train_persona_classifier
    from persona_lib.spec import load_spec, system_prompt
    from persona_lib.train import package_versions

    spec = load_spec(args.persona)
    prompts = heldout_prompts(spec, args.prompts)
    questions = load_knowledge()[: args.questions or None]
    probes = load_honesty(spec.slug)
    classifier = train_persona_classifier()
    model, tokenizer = adapters.load(args.adapter, args.model or None)
    known = known_words(tokenizer)
    conversations = [p["messages"] for p in prompts]
    asks = [[{"role": "user", "content": q["question"]}] for q in questions]
    kw = dict(max_new_tokens=args.max_new_tokens)

    rows, seconds = {}, {}
    for name in names:
        decoding = Decoding(**SETTINGS[name])
        start = time.perf_counter()
        tuned = generate_replies(model, tokenizer, conversations, decoding=decoding, desc=f"{name}: tuned", **kw)
        knowledge = generate_replies(model, tokenizer, asks, decoding=decoding, desc=f"{name}: knowledge",
                                     max_new_tokens=args.knowledge_max_new_tokens)
        honest = generate_replies(model, tokenizer, [p["messages"] for p in probes], decoding=decoding,
                                  desc=f"{name}: honesty probes", **kw) if probes else []
        with model.disable_adapter():
            prompted = generate_replies(model, tokenizer, conversations, decoding=decoding,
                                        system_prompt=system_prompt(spec), desc=f"{name}: base + prompt", **kw)
        seconds[name] = round(time.perf_counter() - start, 1)
        rows[name] = {"decoding": SETTINGS[name], "label": decoding.label,
                      **measure({"tuned": tuned, "base_prompted": prompted}, spec, classifier, questions,
                                knowledge, probes, honest, prompts=prompts, known=known)}
        r = rows[name]
        print(f"{name}: tuned loops {r['tuned']['loop_rate']['mean']:.2f}, base+prompt loops "
              f"{r['base_prompted']['loop_rate']['mean']:.2f}, tuned persona p "
              f"{r['tuned']['persona_probability']['mean']:.3f}, knowledge "
              f"{r['tuned']['knowledge']['recall_percent']:.1f}%"
              f" ({seconds[name]} s)")

    diffs = differences(rows)
    chosen, reasons = choose(diffs, rows)
    print("\n".join(reasons) + f"\nchosen for chat and demos: {chosen}")
    io.write_json(args.results, {
        "what": __doc__.split("\n\n")[0],
        "command": "python bench/bench_decoding.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "adapter": str(args.adapter), "persona": spec.slug, "prompts": len(prompts), "questions": len(questions),
        "probes": len(probes), "max_new_tokens": args.max_new_tokens,
        "knowledge_max_new_tokens": args.knowledge_max_new_tokens,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
        "versions": package_versions(), "seconds": seconds,
        "settings": rows, "vs_greedy": diffs, "rule": reasons, "chosen": chosen,
    })
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
