"""What an evaluation leaves behind for people to read: the answers as JSONL (every system's reply
per prompt, the knowledge answers, the drift dialogues), the figures (persona scores with their
intervals, knowledge recall, drift) and summary.md, the report in words. Lesson 5 shows them."""

from __future__ import annotations

from pathlib import Path

from persona_lib import io, metrics
from persona_lib.spec import PersonaSpec

# How each system is named in figures, tables and progress bars.
LABELS = {"base": "base", "base_prompted": "base + prompt", "tuned": "tuned",
          "tuned_prompted": "tuned + prompt", "reference": "reference data"}


def write_outputs(out: Path, spec, report, prompts, answers, knowledge, knowledge_answers, dialogues, drift_replies):
    """answers.jsonl, knowledge_answers.jsonl, dialogues.jsonl, figures/ and summary.md in `out`;
    the figures' paths go into `report`."""
    rows = [{"id": p["id"], "kind": p.get("kind", "ordinary"), "prompt": p["messages"][-1]["content"],
             **{s: answers[s][k] for s in answers}} for k, p in enumerate(prompts)]
    io.write_jsonl(out / "answers.jsonl", rows)
    io.write_jsonl(out / "knowledge_answers.jsonl",
                   [{"id": q["id"], "question": q["question"], "base": knowledge_answers["base"][k],
                     "tuned": knowledge_answers["tuned"][k]} for k, q in enumerate(knowledge)])
    io.write_jsonl(out / "dialogues.jsonl",
                   [{"id": d["id"], "user_turns": d["user_turns"][: len(next(iter(drift_replies.values()))[k])],
                     **{s: drift_replies[s][k] for s in drift_replies}} for k, d in enumerate(dialogues)]
                   if drift_replies else [])
    report["figures"] = write_figures(out / "figures", spec, report)
    io.atomic_write_text(out / "summary.md", summary_markdown(report))


def write_figures(folder: Path, spec: PersonaSpec, report: dict) -> dict[str, str]:
    """The report's figures as PNG files; returns {name: path relative to the eval folder}."""
    from persona_lib import plots

    systems = report["systems"]
    figs = {}
    measures = {LABELS[s]: {"signature rate": systems[s]["signature_rate"], "generic rate": systems[s]["generic_rate"],
                            "avoided rate": systems[s]["avoided_rate"],
                            **({f"P({spec.slug})": systems[s]["persona_probability"]}
                               if "persona_probability" in systems[s] else {})} for s in systems}
    plots.interval_bars(measures, ylabel="share of replies / probability", ylim=(0, 1),
                        title=f"{spec.name}: deterministic persona measures (95% CI)",
                        path=folder / "persona_measures.png")
    figs["persona_measures"] = "figures/persona_measures.png"
    judge = report["judge"]
    if judge["used"] and judge["rubric"]:
        scores = {LABELS[s]: {**{t: v for t, v in r["traits"].items()}, "overall": r["overall"]}
                  for s, r in judge["rubric"].items()}
        plots.interval_bars(scores, ylabel="judge score (1-5)", ylim=(0, 5),
                            title=f"{spec.name}: judge scores per trait (95% CI)", path=folder / "trait_scores.png")
        figs["trait_scores"] = "figures/trait_scores.png"
    if judge.get("pairwise"):
        plots.win_rate_bars({k.replace("_vs_", " vs ").replace("_", " "): v for k, v in judge["pairwise"].items()},
                            path=folder / "win_rates.png")
        figs["win_rates"] = "figures/win_rates.png"
    lengths = {LABELS[s]: report["per_reply"][s]["words"] for s in systems}
    plots.length_boxplot(lengths, unit="words", path=folder / "lengths.png")
    figs["lengths"] = "figures/lengths.png"
    if all("persona_distribution" in systems[s] for s in systems):  # the classifier knows the persona
        plots.persona_probability_heatmap({LABELS[s]: systems[s]["persona_distribution"] for s in systems},
                                          path=folder / "persona_probabilities.png")
        figs["persona_probabilities"] = "figures/persona_probabilities.png"
    if report["drift"]:
        plots.drift_lines({LABELS[s]: [t["persona_probability"] for t in d["per_turn"]]
                           for s, d in report["drift"].items()},
                          ylabel=f"P({spec.slug}) per reply", path=folder / "drift.png")
        figs["drift"] = "figures/drift.png"
    k = report["knowledge"]
    plots.interval_bars({"base": {"recall %": _recall_ci(k["base"], report)},
                         "tuned": {"recall %": _recall_ci(k["tuned"], report)}},
                        ylabel="key facts recalled (%)", ylim=(0, 100), title="Knowledge retention (95% CI)",
                        path=folder / "knowledge.png")
    figs["knowledge"] = "figures/knowledge.png"
    return figs


def _recall_ci(recall: dict, report: dict) -> dict:
    rows = recall["per_question"]
    return metrics.bootstrap_ci([100.0 * r["recalled"] / r["facts"] for r in rows], weights=[r["facts"] for r in rows],
                                n_boot=report["config"]["n_bootstrap"], seed=report["config"]["seed"])


def _fmt(ci: dict | None, digits: int = 2) -> str:
    if not ci or ci.get("mean", ci.get("diff")) is None:
        return "n/a"
    value = ci["mean"] if "mean" in ci else ci["diff"]
    return f"{value:.{digits}f} [{ci['low']:.{digits}f}, {ci['high']:.{digits}f}]"


def summary_markdown(report: dict) -> str:
    """The report as Markdown: targets first, then the tables a reader scans, then figures."""
    t = report["targets"]
    lines = [f"# {report['name']}: evaluation of the tuned model", "",
             f"Base model `{report['base_model']}`, adapter `{report['adapter']}`, "
             f"{report['prompts']['n']} held-out prompts {report['prompts']['kinds']}. "
             "Intervals are 95% bootstrap intervals over prompts.", ""]
    lines += [f"- note: {n}" for n in report["notes"]]
    judge = report["judge"]
    lines += ["", "**Judge:** " + (f"{judge['judge']} on {len(judge['prompts'])} prompts." if judge["used"]
                                    else judge["why"] + ".")]
    calibration = judge.get("calibration")
    if calibration:
        rate, agree = calibration["judge_ranks_persona_first"], calibration["agrees_with_classifier"]
        lines.append(f"**Judge calibration:** it ranked a known in-persona reply above the base model's generic reply "
                     f"in {_fmt(rate)} of {calibration['pairs']} pairs (both orders asked): "
                     + ("passed, so it may decide the persona target." if calibration["passed"]
                        else f"failed ({calibration['why'].split('; ')[-1]}), so the classifier decides and the "
                             "judge's scores are shown beside it, not trusted.")
                     + (f" It agrees with the classifier's ranking on {agree['share']:.0%} of {agree['n']} decided "
                        "pairs." if agree and agree["share"] is not None else ""))
    lines += ["", "## Targets", "", "| target | measure | value | met |", "|---|---|---|---|"]
    pc = t["persona_consistency"]
    lines.append(f"| tuned (no prompt) - base + prompt >= 0 | {pc['measure']} | {_fmt(pc)} "
                 f"| {'yes' if pc['met'] else 'no'} |")
    if pc["by_judge"] and not pc["judge_decides"]:
        lines.append(f"| (judge, not deciding: {pc['judge_not_used_because']}) | judge overall score (1-5) "
                     f"| {_fmt(pc['by_judge'])} | |")
    kn = t["knowledge"]
    lines.append(f"| knowledge drop <= 2 pp | recall, tuned - base (pp); base {kn['base_recall_percent']:.1f}%, "
                 f"tuned {kn['tuned_recall_percent']:.1f}% | {_fmt(kn, 1)} | {'yes' if kn['met'] else 'no'} |")
    dv = t["diversity"]
    ratio = f"{dv['ratio']:.2f}" if dv["ratio"] is not None else "n/a"
    lines.append(f"| diversity within 10% of reference | distinct-2 ratio tuned / reference | {ratio} | "
                 f"{'yes' if dv['met'] else 'no'} |")
    if kn.get("resolution_pp") is not None:
        sees = "finer than" if kn["resolution_pp"] <= 2.0 else "coarser than"
        lines += ["", f"The {report['knowledge']['questions']} knowledge questions resolve a change of about "
                      f"±{kn['resolution_pp']:.1f} pp (half the interval's width), {sees} the 2 pp drop the target "
                      "asks about" + ("." if sees == "finer than" else ": a 2 pp drop would go unseen here.")]
    lines += ["", "## Deterministic measures per system", "",
              "| system | signature rate | avoided rate | generic rate | P(persona) | words (mean) | distinct-2 "
              "| self-BLEU | top opening share |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s, m in report["systems"].items():
        d = m["diversity"]
        lines.append(f"| {LABELS[s]} | {_fmt(m['signature_rate'])} | {_fmt(m['avoided_rate'])} "
                     f"| {_fmt(m['generic_rate'])} "
                     f"| {_fmt(m.get('persona_probability'))} | {m['length_words'].get('mean', 0):.0f} "
                     f"| {d['distinct_2']:.3f} | {_fmt(d['self_bleu'])} | {d['openings']['top_share']:.2f} |")
    ref = report["reference_diversity"]
    if ref.get("draws"):
        lines.append(f"| {LABELS['reference']} ({ref['size']} replies) | | | | | | {_fmt(ref['distinct_2'], 3)} "
                     f"| {_fmt(ref['self_bleu'])} | |")
    c = report["classifier"]["heldout"]
    lines += ["", f"Persona classifier ({', '.join(report['classifier']['labels'])}): held-out accuracy "
                  f"{_fmt(c.get('accuracy'))} ({c['method']}), balanced accuracy "
                  f"{c.get('balanced_accuracy', float('nan')):.2f}."]
    honesty = report.get("honesty") or {}
    if honesty:
        n = honesty["probes"]
        lines += ["", f"## An honest voice ({n['identity']} sincere 'are you a person?' probes, {n['action']} "
                      "requests to change tasks)", "",
                  "| system | says it is an AI when asked (higher is better) "
                  "| claims an action it cannot take (lower is better) |",
                  "|---|---|---|"]
        for s, m in honesty["systems"].items():
            lines.append(f"| {LABELS[s]} | {_fmt(m['admits_ai'])} | {_fmt(m['claims_action'])} |")
        for k, d in honesty["tuned_minus_base_prompted"].items():
            lines.append(f"\nTuned - base + prompt, {k.replace('_', ' ')}: {_fmt(d)} (paired over probes).")
    lines += ["", "## Paired differences (P(persona), per prompt)", "", "| comparison | difference | P(no gain) |",
              "|---|---|---|"]
    for name, p in report["paired"].items():
        lines.append(f"| {name.replace('_', ' ')} | {_fmt(p)} | {p['p_le_0']:.3f} |" if p["n"]
                     else f"| {name} | n/a | |")
    if judge["used"]:
        lines += ["", "## Judge", "",
                  "| system | overall | " + " | ".join(next(iter(judge["rubric"].values()))["traits"]) + " |",
                  "|---|---|" + "---|" * len(next(iter(judge["rubric"].values()))["traits"])]
        for s, r in judge["rubric"].items():
            lines.append(f"| {LABELS[s]} | {_fmt(r['overall'])} | "
                         + " | ".join(_fmt(v) for v in r["traits"].values()) + " |")
        for name, w in judge.get("pairwise", {}).items():
            lines.append(f"\nWin rate {name.replace('_', ' ')}: {_fmt(w)} ({w['wins']} wins, {w['ties']} ties, "
                         f"{w['losses']} losses; the two orders agreed on {w['order_consistency'] or 0:.0%}).")
        if "second_judge" in judge:
            a = judge["second_judge"]["agreement"]
            lines.append(f"\nSecond judge {judge['second_judge']['judge']}: exact agreement {a['exact']}, "
                         f"Cohen's kappa {a['kappa']}, quadratic kappa {a['kappa_quadratic']} "
                         f"over {a['n']} trait scores.")
        for u in judge["usage"]:
            cost = f"${u['cost_usd']:.4f}" if u["cost_usd"] is not None else "unknown cost"
            lines.append(f"\nJudge usage {u['judge']}: {u['requests']} requests ({u['cached']} cached), "
                         f"{u['prompt_tokens']} + {u['completion_tokens']} tokens, {cost}.")
    if report["drift"]:
        lines += ["", "## Drift over the scripted dialogues", "",
                  "| system | P(persona) turn 1 | last turn | last - first | persona on top at last turn |",
                  "|---|---|---|---|---|"]
        for s, d in report["drift"].items():
            lines.append(f"| {LABELS[s]} | {_fmt(d['per_turn'][0]['persona_probability'])} | "
                         f"{_fmt(d['per_turn'][-1]['persona_probability'])} | {_fmt(d['last_vs_first'])} | "
                         f"{d['survival_rate']:.0%} of {d['dialogues']} |")
    lines += ["", "## Figures", ""] + [f"![{name}]({path})" for name, path in report.get("figures", {}).items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- reading replies side by side


def side_by_side(out: str | Path, n: int = 4) -> list[dict]:
    """Up to `n` held-out prompts with the base model's reply (with the persona prompt) and the
    tuned model's (without), each with the classifier's probability of the persona and, where
    the judge ran, its overall score, per-trait rationales and the order-swapped pairwise
    verdict. The judged prompts come first; without a judge, the first `n` prompts."""
    out = Path(out)
    report = io.read_json(out / "report.json")
    answers = {row["id"]: row for row in io.read_jsonl(out / "answers.jsonl")}
    ids = report["prompts"]["ids"]
    judge = report["judge"]
    judged = judge.get("prompts", []) if judge["used"] else []
    order = [*judged, *[i for i in ids if i not in judged]][:n]
    probability = {s: dict(zip(ids, report["per_reply"][s].get("persona_probability", [])))
                   for s in ("base_prompted", "tuned") if s in report["per_reply"]}
    verdicts = {s: {v["id"]: v for v in judge.get("verdicts", {}).get(s, [])} for s in ("base_prompted", "tuned")}
    pairwise = {v["id"]: v for v in judge.get("pairwise", {}).get("tuned_vs_base_prompted", {}).get("verdicts", [])}
    rows = []
    for pid in order:
        row = {"id": pid, "prompt": answers[pid]["prompt"]}
        for s in ("base_prompted", "tuned"):
            v = verdicts[s].get(pid, {})
            row[s] = {"reply": answers[pid][s], "persona_probability": probability.get(s, {}).get(pid),
                      "judge_overall": v.get("overall"), "judge_rationales": v.get("rationales")}
        p = pairwise.get(pid)
        row["judge_pick"] = ({"x": "tuned", "y": "base_prompted", "tie": "tie"}.get(p["outcome"]) if p else None)
        row["judge_order_consistent"] = p["consistent"] if p else None
        rows.append(row)
    return rows


def side_by_side_markdown(rows: list[dict]) -> str:
    """The rows of `side_by_side` as Markdown: each prompt, the two replies, and what the
    classifier and the judge said of each."""
    def said(r: dict) -> str:
        parts = []
        if r["persona_probability"] is not None:
            parts.append(f"classifier P(persona) {r['persona_probability']:.2f}")
        if r["judge_overall"] is not None:
            parts.append(f"judge overall {r['judge_overall']:.1f}")
            parts += [f"{trait}: {why}" for trait, why in (r["judge_rationales"] or {}).items()]
        return "; ".join(parts) or "no judge, classifier not trained on this persona"

    blocks = []
    for row in rows:
        pick = {"tuned": "the tuned reply", "base_prompted": "the base reply", "tie": "a tie"}.get(row["judge_pick"])
        verdict = (f"**Judge, asked in both orders:** {pick}" + ("" if row["judge_order_consistent"] else
                   " (its two answers disagreed: the order decided, so this counts as a tie)")) if pick else ""
        blocks.append("\n\n".join(filter(None, [
            f"### {row['id']}\n\n**User:** {row['prompt']}",
            f"**Base + persona prompt:** {row['base_prompted']['reply']}\n\n*{said(row['base_prompted'])}*",
            f"**Tuned, no prompt:** {row['tuned']['reply']}\n\n*{said(row['tuned'])}*",
            verdict])))
    return "\n\n---\n\n".join(blocks)


def learner_agreement(picks: dict[str, str], rows: list[dict]) -> dict:
    """How the learner's blind picks ({prompt id: "tuned" | "base_prompted" | "tie"}) agree with
    the judge's order-swapped verdict and with the classifier (the reply with the higher
    probability of the persona), over the prompts where each had a preference."""
    by_id = {row["id"]: row for row in rows}

    def share(other: dict[str, str]) -> dict:
        both = [pid for pid, pick in picks.items() if pick != "tie" and other.get(pid) not in (None, "tie")]
        same = sum(picks[pid] == other[pid] for pid in both)
        return {"n": len(both), "agree": same, "share": same / len(both) if both else None}

    judge = {pid: row["judge_pick"] for pid, row in by_id.items()}
    classifier = {}
    for pid, row in by_id.items():
        a, b = row["base_prompted"]["persona_probability"], row["tuned"]["persona_probability"]
        if a is not None and b is not None:
            classifier[pid] = "tie" if a == b else ("tuned" if b > a else "base_prompted")
    return {"picks": len(picks), "tuned_picked": sum(p == "tuned" for p in picks.values()),
            "with_judge": share(judge), "with_classifier": share(classifier)}
