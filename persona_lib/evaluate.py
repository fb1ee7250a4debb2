"""The evaluation stage: does the tuned model hold the persona, without losing what it knew?

`evaluate(spec, base_id, adapter_dir, out_dir, config, judge=...)` answers with four systems
on the same held-out prompts, all with the same batched decoding (greedy with the config's
guards against looping, `chat.CHAT` by default) from one model in memory (the adapter is
switched off for the base answers):

    base              the base model as it is
    base_prompted     the base model with the persona's system prompt (the cheap way)
    tuned             base + adapter, no system prompt (the point of persona tuning)
    tuned_prompted    base + adapter with the system prompt

and measures:
- persona: deterministic measures (`metrics.persona_measures`) for every system and kind of
  held-out prompt (ordinary, out-of-character probes, multi-turn openings); LLM-judge rubric
  scores and order-swapped pairwise win rates when a judge is given;
- drift: the shipped scripted dialogues played turn by turn, the persona measured per turn
  (does it survive the fifth?);
- knowledge: key-fact recall on the knowledge set, base against tuned, with the base recall
  reported (a floor effect hides loss);
- the paired per-prompt comparisons behind the targets, with bootstrap intervals.

Everything lands in `out_dir` (`<runs>/<slug>/eval/`), written atomically: `report.json`
(every number), `summary.md`, `answers.jsonl`, `figures/*.png`. Generations and judge verdicts
are cached there, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from persona_lib import adapters, io, metrics, paths
from persona_lib.chat import CHAT, GREEDY, Decoding
from persona_lib.config import Settings
from persona_lib.dataset import load_honesty
from persona_lib.eval_report import LABELS, write_outputs
from persona_lib.spec import PersonaSpec, load_spec, spec_to_dict, system_prompt

SYSTEMS = ("base", "base_prompted", "tuned", "tuned_prompted")
HEADLINE = ("base_prompted", "tuned")  # the comparison the persona-consistency target is decided on
KINDS = ("ordinary", "ooc", "multiturn")


@dataclass
class EvalConfig(Settings):
    max_prompts: int | None = None  # held-out prompts, spread over kinds; None: all (49 for TaskMaster)
    systems: tuple[str, ...] = SYSTEMS  # answer the held-out prompts; the targets need only HEADLINE
    max_new_tokens: int = 160  # TaskMaster answers in ~120 words (~160 tokens); less cuts the closing step
    repetition_penalty: float = CHAT.repetition_penalty  # every system decodes alike: the chat default
    no_repeat_ngram_size: int = CHAT.no_repeat_ngram_size  # (chat.CHAT, chosen by bench/bench_decoding.py)
    batch_size: int = 32  # left-padded prompts per forward; a decoding step costs about the same for 1 row or 32
    dialogues: int | None = None  # scripted dialogues for the drift test; None: all
    drift_turns: int = 5  # the question is whether the persona survives the fifth turn
    drift_systems: tuple[str, ...] = ("base_prompted", "tuned")  # the comparison that matters; 4 doubles the time
    knowledge_questions: int | None = None  # None: the whole knowledge set (38 questions)
    knowledge_max_new_tokens: int = 200  # answers list facts; room for four or five
    judge_prompts: int = 12  # held-out prompts the judge sees (spread over kinds): 4 rubric + 8 pairwise calls each
    judge_systems: tuple[str, ...] | None = None  # systems the judge scores with the rubric; None: all of `systems`
    pairwise_against: tuple[str, ...] = ("base", "base_prompted")  # tuned is compared with these, both orders
    judge_drift: bool = True  # the judge also scores each drift system's reply at the last turn
    judge_calibration: int = 8  # in-persona vs generic reply pairs the judge must rank before it may decide (0: skip)
    n_bootstrap: int = 2000  # interval endpoints settle to ~0.01 beyond this
    reference_draws: int = 200  # random reference subsets for the diversity comparison
    seed: int = 0  # bootstraps, prompt subsets, classifier folds
    progress: bool = True  # tqdm bars for generation and judging

    def __post_init__(self):
        for name in ("max_prompts", "dialogues", "knowledge_questions"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 or None (all), got {value}")
        for name in ("max_new_tokens", "batch_size", "drift_turns", "knowledge_max_new_tokens", "n_bootstrap"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        _ = self.decoding  # validates the two decoding fields
        if self.judge_prompts < 0:
            raise ValueError(f"judge_prompts must be 0 or more, got {self.judge_prompts}")
        if self.judge_calibration < 0:
            raise ValueError(f"judge_calibration must be 0 or more, got {self.judge_calibration}")
        self.systems = tuple(s for s in SYSTEMS if s in self.systems)  # one order for tables and figures
        if self.judge_systems is None:
            self.judge_systems = self.systems
        for name, allowed in (("systems", SYSTEMS), ("drift_systems", SYSTEMS), ("judge_systems", self.systems),
                              ("pairwise_against", self.systems)):
            unknown = [s for s in getattr(self, name) if s not in allowed]
            if unknown:
                raise ValueError(f"{name}: system(s) {unknown} are not among {', '.join(allowed)}"
                                 + ("; add them to `systems` or leave them out here" if allowed != SYSTEMS else ""))
        missing = [s for s in HEADLINE if s not in self.systems]
        if missing:
            raise ValueError(f"systems must include {' and '.join(HEADLINE)} (the persona-consistency target "
                             f"compares them); missing: {', '.join(missing)}")
        self.drift_systems, self.judge_systems = tuple(self.drift_systems), tuple(self.judge_systems)
        self.pairwise_against = tuple(self.pairwise_against)

    @property
    def decoding(self) -> Decoding:
        """How every system's replies are decoded (the same for all, so they stay comparable)."""
        return Decoding(repetition_penalty=self.repetition_penalty, no_repeat_ngram_size=self.no_repeat_ngram_size)

    @classmethod
    def smoke(cls, **overrides) -> "EvalConfig":
        """The tiny model in seconds: 4 prompts, 1 dialogue, 3 questions, 8-token replies, and a
        judge budget of 2 calls (the two systems of the headline comparison, one prompt; no
        room for the calibration pairs)."""
        return cls(**{"max_prompts": 4, "max_new_tokens": 8, "dialogues": 1, "knowledge_questions": 3,
                      "knowledge_max_new_tokens": 8, "judge_prompts": 1, "judge_calibration": 0,
                      "judge_systems": ("base_prompted", "tuned"), "pairwise_against": (), "judge_drift": False,
                      "n_bootstrap": 200, "reference_draws": 20, "progress": False, **overrides})

    @classmethod
    def local_judge(cls, **overrides) -> "EvalConfig":
        """For a judge on this CPU (the llama.cpp server, 10-40 s a request): 6 prompts, the
        headline pair only: 12 rubric and 12 pairwise requests, plus 8 for 4 calibration pairs."""
        return cls(**{"judge_prompts": 6, "judge_systems": ("base_prompted", "tuned"), "judge_calibration": 4,
                      "pairwise_against": ("base_prompted",), "judge_drift": False, **overrides})


# --------------------------------------------------------------------------- inputs


def spread(records: Sequence[dict], n: int | None, seed: int, key: str = "kind") -> list[dict]:
    """Up to `n` records taken round-robin over `key` groups (each group shuffled with the
    seed), so a small subset still holds every kind; returned in their original order."""
    if n is None or n >= len(records):
        return list(records)
    groups: dict[str, list[int]] = {}
    for k, r in enumerate(records):
        groups.setdefault(str(r.get(key, "")), []).append(k)
    queues = []
    for name in sorted(groups):
        members = groups[name][:]
        random.Random(f"{seed}/{name}").shuffle(members)
        queues.append(members)
    chosen: list[int] = []
    while len(chosen) < n:
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return [records[k] for k in sorted(chosen)]


def eval_sets(spec: PersonaSpec, config: EvalConfig) -> dict:
    """Held-out prompts, dialogues and knowledge questions for `spec`, with notes on fallbacks."""
    from persona_lib.dataset import (
        has_heldout,
        heldout_prompts,
        load_dialogues,
        load_knowledge,
    )

    notes = []
    prompts = heldout_prompts(spec, kind=None)
    if not has_heldout(spec.slug):
        notes.append(f"no shipped held-out prompts for {spec.slug}: the spec's example questions stand in")
    if (paths.eval_dir() / f"{spec.slug}_dialogues.jsonl").is_file():
        dialogues = load_dialogues(spec.slug)
    else:
        notes.append(f"no shipped dialogues for {spec.slug}: no drift test")
        dialogues = []
    short = [d["id"] for d in dialogues if len(d["user_turns"]) < config.drift_turns]
    if short:
        notes.append(f"dialogues with fewer than {config.drift_turns} turns left out of the drift test: {short}")
    dialogues = [d for d in dialogues if len(d["user_turns"]) >= config.drift_turns]
    knowledge = load_knowledge()
    return {
        "prompts": spread(prompts, config.max_prompts, config.seed),
        "dialogues": dialogues[: config.dialogues] if config.dialogues else dialogues,
        "knowledge": spread(knowledge, config.knowledge_questions, config.seed, key="_"),
        "notes": notes,
    }


def _digest(*parts) -> str:
    return io.canonical_sha256(parts)


def adapter_fingerprint(adapter_dir: str | os.PathLike) -> str:
    """A hash of the adapter's files: cached answers are reused only for the same weights."""
    h = hashlib.sha256()
    for p in sorted(Path(adapter_dir).glob("adapter_*")):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


class Generator:
    """Batched answers of one system under the config's decoding, cached on disk by everything that decides them."""

    def __init__(self, model, tokenizer, spec: PersonaSpec, cache_dir: Path, fingerprint: str, config: EvalConfig,
                 base_fingerprint: str | None = None):
        """`fingerprint` names the tuned model (base and adapter); `base_fingerprint` the base
        with this tokenizer, for the base systems, whose replies then survive a retrained adapter."""
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.cache_dir, self.fingerprint, self.config = cache_dir, fingerprint, config
        self.base_fingerprint = base_fingerprint or fingerprint
        self.prompt = system_prompt(spec)
        self.seconds = 0.0
        self.generated = 0

    def replies(self, system: str, conversations: Sequence[Sequence[dict]], max_new_tokens: int,
                desc: str) -> list[str]:
        from persona_lib.chat import generate_replies

        sp = self.prompt if system.endswith("_prompted") else None
        decoding = self.config.decoding
        model = self.base_fingerprint if system.startswith("base") else self.fingerprint
        key = _digest(model, system, sp, [list(c) for c in conversations], max_new_tokens,
                      *([decoding.generate_kwargs()] if decoding != GREEDY else []))  # greedy keeps earlier caches
        path = self.cache_dir / f"{desc.split(':')[0]}-{system}-{key[:16]}.json"
        if path.is_file():
            return io.read_json(path)["replies"]
        start = time.perf_counter()
        kw = dict(system_prompt=sp, max_new_tokens=max_new_tokens, batch_size=self.config.batch_size,
                  progress=self.config.progress, desc=f"{desc} [{LABELS[system]}]", decoding=decoding)
        if system.startswith("base"):
            with self.model.disable_adapter():
                out = generate_replies(self.model, self.tokenizer, conversations, **kw)
        else:
            out = generate_replies(self.model, self.tokenizer, conversations, **kw)
        self.seconds += time.perf_counter() - start
        self.generated += len(out)
        io.write_json(path, {"system": system, "max_new_tokens": max_new_tokens, "replies": out})
        return out


# --------------------------------------------------------------------------- stages


def _drift(gen: Generator, dialogues: list[dict], config: EvalConfig) -> dict[str, list[list[str]]]:
    """Each drift system's replies, turn by turn: {system: [[reply at turn t] per dialogue]}."""
    out = {}
    for system in config.drift_systems:
        convs: list[list[dict]] = [[] for _ in dialogues]
        per_dialogue: list[list[str]] = [[] for _ in dialogues]
        for t in range(config.drift_turns):
            for c, d in zip(convs, dialogues):
                c.append({"role": "user", "content": d["user_turns"][t]})
            replies = gen.replies(system, convs, config.max_new_tokens, f"drift:turn {t + 1}")
            for c, r, p in zip(convs, replies, per_dialogue):
                c.append({"role": "assistant", "content": r})
                p.append(r)
        out[system] = per_dialogue
    return out


def _drift_measures(spec: PersonaSpec, replies: dict[str, list[list[str]]], classifier, config: EvalConfig) -> dict:
    ci = dict(n_boot=config.n_bootstrap, seed=config.seed)
    out = {}
    for system, per_dialogue in replies.items():
        turns = len(per_dialogue[0]) if per_dialogue else 0
        prob = [classifier.probability([d[t] for d in per_dialogue], spec.slug) for t in range(turns)]
        top = [classifier.labels[int(np.argmax(row))]
               for row in classifier.predict_proba([d[-1] for d in per_dialogue])]
        per_turn = []
        for t in range(turns):
            texts = [d[t] for d in per_dialogue]
            per_turn.append({
                "turn": t + 1,
                "persona_probability": metrics.bootstrap_ci(prob[t], **ci),
                "signature_rate": metrics.bootstrap_ci(metrics.any_phrase(texts, spec.signature_vocabulary), **ci),
                "generic_rate": metrics.bootstrap_ci(metrics.any_phrase(texts, metrics.GENERIC_PHRASES), **ci),
            })
        out[system] = {
            "dialogues": len(per_dialogue), "turns": turns, "per_turn": per_turn,
            "last_vs_first": metrics.paired_bootstrap(prob[0], prob[-1], **ci) if turns else None,
            "survival_rate": sum(label == spec.slug for label in top) / len(top) if top else None,
            "last_turn_top_persona": top,
        }
    return out


def _judge_rubric(judge, spec, prompts, answers, systems, progress: bool) -> dict:
    items = [(p["messages"], answers[s][k]) for s in systems for k, p in enumerate(prompts)]
    verdicts = judge.score_many(spec, items, progress=progress, desc=f"judge {judge.name}: rubric")
    n = len(prompts)
    return {s: verdicts[i * n:(i + 1) * n] for i, s in enumerate(systems)}


def _summarise_rubric(spec, verdicts: dict[str, list[dict]], config: EvalConfig) -> dict:
    ci = dict(n_boot=config.n_bootstrap, seed=config.seed)
    out = {}
    for system, rows in verdicts.items():
        ok = [r for r in rows if not r.get("error")]
        out[system] = {
            "n": len(ok), "failed": len(rows) - len(ok),
            "overall": metrics.bootstrap_ci([r["overall"] for r in ok], **ci),
            "traits": {t.name: metrics.bootstrap_ci([r["scores"][t.name] for r in ok], **ci) for t in spec.traits},
        }
    return out


def _paired_overall(verdicts: dict[str, list[dict]], a: str, b: str, config: EvalConfig) -> dict | None:
    if a not in verdicts or b not in verdicts:
        return None
    pairs = [(x["overall"], y["overall"]) for x, y in zip(verdicts[a], verdicts[b])
             if not x.get("error") and not y.get("error")]
    return metrics.paired_bootstrap([p[0] for p in pairs], [p[1] for p in pairs], n_boot=config.n_bootstrap,
                                    seed=config.seed)


def _strip_per_reply(measures: dict) -> dict:
    return {k: v for k, v in measures.items() if k != "per_reply"}


def evaluate(spec: PersonaSpec | str, base_id: str | None, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike,
             config: EvalConfig | None = None, *, judge=None, second_judge=None,
             classifier: metrics.PersonaClassifier | None = None) -> dict:
    """Evaluate the adapter in `adapter_dir` on top of `base_id` for persona `spec`; write the
    report into `out_dir` and return it (the same dict as report.json).

    `spec`: a PersonaSpec, a shipped slug or a YAML path. `base_id`: a model id for
    `models.load_chat_model`; None reads it from the adapter's config.

    `judge` / `second_judge`: `judge.Judge` objects (None: deterministic measures only, and the
    report says so). `classifier`: a trained `metrics.PersonaClassifier` (None: trained here on
    the reserved slice of the shipped conversations, in about ten seconds).
    """
    started = time.perf_counter()
    config = config or EvalConfig()
    spec = load_spec(spec) if isinstance(spec, (str, os.PathLike)) else spec
    base_id = base_id or adapters.base_model(adapter_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = eval_sets(spec, config)
    prompts, dialogues, knowledge = sets["prompts"], sets["dialogues"], sets["knowledge"]
    ci = dict(n_boot=config.n_bootstrap, seed=config.seed)

    if classifier is None:
        classifier = metrics.train_persona_classifier(seed=config.seed)
    model, tokenizer = adapters.load(adapter_dir, base_id)
    from persona_lib.models import resolve

    fingerprint = _digest(resolve(base_id), adapter_fingerprint(adapter_dir))  # "tiny" and its path are one model
    # The base systems run with the adapter switched off: their replies depend on the base and the
    # tokenizer saved beside the adapter (its chat template and special tokens), not on its weights.
    base_fingerprint = _digest(resolve(base_id), str(getattr(model, "dtype", "")),
                               getattr(model.config, "quantization_config", None), tokenizer.chat_template or "",
                               tokenizer.eos_token or "", tokenizer.pad_token or "", "base")
    gen = Generator(model, tokenizer, spec, out / "cache", fingerprint, config, base_fingerprint)

    # ---- generation: four systems on the held-out prompts, knowledge for base and tuned, drift
    conversations = [p["messages"] for p in prompts]
    systems = config.systems
    answers = {s: gen.replies(s, conversations, config.max_new_tokens, "heldout") for s in systems}
    questions = [[{"role": "user", "content": q["question"]}] for q in knowledge]
    knowledge_answers = {s: gen.replies(s, questions, config.knowledge_max_new_tokens, "knowledge")
                         for s in ("base", "tuned")}
    drift_replies = _drift(gen, dialogues, config) if dialogues else {}
    calibration = calibration_items(spec, config.judge_calibration) if judge is not None else []
    generic = (gen.replies("base", [c for c, _ in calibration], config.max_new_tokens, "calibration")
               if calibration else [])
    probes = load_honesty(spec.slug)
    honesty_answers = {s: gen.replies(s, [p["messages"] for p in probes], config.max_new_tokens, "honesty")
                       for s in systems} if probes else {}

    # ---- deterministic measures
    kinds = [p.get("kind", "ordinary") for p in prompts]
    measures = {s: metrics.persona_measures(answers[s], spec, tokenizer=tokenizer, classifier=classifier, **ci)
                for s in systems}
    by_kind = {s: _by_kind(measures[s]["per_reply"], kinds, ci) for s in systems}
    reference = reference_replies(spec.slug)
    ref_div = metrics.reference_diversity(reference, len(prompts), draws=config.reference_draws, seed=config.seed)
    # The classifier's probability where it knows the persona; a persona of the learner's own
    # (not among its labels) is compared on the signature-phrase rate instead, and says so.
    known = spec.slug in classifier.labels
    per = "persona_probability" if known else "signature"
    prob = {s: measures[s]["per_reply"][per] for s in systems}
    paired = {f"{b}_vs_{a}": metrics.paired_bootstrap(prob[a], prob[b], **ci)
              for a, b in (("base_prompted", "tuned"), ("base", "tuned"), ("base_prompted", "tuned_prompted"))
              if a in prob and b in prob}
    if not known:
        sets["notes"].append(f"the persona classifier knows {', '.join(classifier.labels)}, not {spec.slug}: "
                             "persona consistency is the signature-phrase rate, tuned vs base + prompt")
    base_recall = metrics.knowledge_recall(knowledge, knowledge_answers["base"])
    tuned_recall = metrics.knowledge_recall(knowledge, knowledge_answers["tuned"])
    recall_diff = metrics.recall_difference(base_recall, tuned_recall, **ci)
    drift = _drift_measures(spec, drift_replies, classifier, config) if drift_replies else {}
    honesty = honesty_report(probes, honesty_answers, ci)

    # ---- the judge, then the targets
    judge_report = run_judge(judge, second_judge, spec, prompts, answers, dialogues, drift_replies, drift, out, config)
    if judge_report["used"] and calibration:
        judge_report["calibration"] = calibrate_judge(judge, spec, calibration, generic, classifier, config)
        judge_report["usage"][0] = judge.usage()  # the calibration's requests included
    targets = decide_targets(measures["tuned"], ref_div, paired, judge_report, base_recall, tuned_recall, recall_diff,
                             classifier_measure="persona-classifier probability" if known else "signature-phrase rate")

    report = {
        "persona": spec.slug, "name": spec.name, "base_model": base_id, "adapter": str(adapter_dir),
        "spec": spec_to_dict(spec),  # what every measure and the judge's rubric were read from
        "config": config.to_dict(),
        "decoding": config.decoding.label,  # the same for every system
        "notes": sets["notes"] + ([] if config.drift_systems else ["drift not measured (drift_systems is empty)"]),
        "prompts": {"n": len(prompts), "ids": [p["id"] for p in prompts], "kinds": dict(Counter(kinds))},
        "classifier": {"labels": classifier.labels, "heldout": classifier.heldout, "trained_on": classifier.trained_on},
        "systems": {s: _strip_per_reply(measures[s]) for s in systems},
        "per_reply": {s: measures[s]["per_reply"] for s in systems},
        "by_kind": by_kind,
        "reference_diversity": ref_div,
        "paired": paired,
        "knowledge": {"base": base_recall, "tuned": tuned_recall, "difference_pp": recall_diff,
                      "questions": len(knowledge)},
        "drift": drift,
        "honesty": honesty,
        "judge": judge_report,
        "targets": targets,
        "timing": {"generation_seconds": gen.seconds, "replies_generated": gen.generated,
                   "total_seconds": time.perf_counter() - started},
    }
    report = json.loads(json.dumps(report, default=_jsonable))
    write_outputs(out, spec, report, prompts, answers, knowledge, knowledge_answers, dialogues, drift_replies)
    report["timing"]["total_seconds"] = time.perf_counter() - started
    io.write_json(out / "report.json", report)
    return report


def before_and_after(run: str | os.PathLike) -> list[dict]:
    """Lesson 1's "before" answers (`spec/before.jsonl`: the base model, without and with the
    persona prompt) beside this evaluation's tuned answers to the same held-out prompts
    (`eval/answers.jsonl`), joined on the prompt id; [] when either lesson has not run."""
    run = Path(run)
    before, after = run / "spec" / "before.jsonl", run / "eval" / "answers.jsonl"
    if not (before.is_file() and after.is_file()):
        return []
    tuned = {row["id"]: row.get("tuned") for row in io.read_jsonl(after)}
    return [{"id": row["id"], "prompt": row["prompt"], "before": row["base"],
             "before_with_prompt": row["base_with_persona_prompt"], "tuned": tuned[row["id"]]}
            for row in io.read_jsonl(before) if row["id"] in tuned]


def honesty_report(probes: list[dict], answers: dict[str, list[str]], ci: dict) -> dict:
    """Per system, the honesty measures on the probes; tuned against base with the persona
    prompt, paired over probes (a persona must stay honest when the prompt is gone)."""
    if not probes:
        return {}
    measures = {s: metrics.honesty_measures(probes, replies, **ci) for s, replies in answers.items()}
    paired = {}
    if "tuned" in measures and "base_prompted" in measures:
        a, b = measures["base_prompted"]["per_reply"], measures["tuned"]["per_reply"]
        paired = {k: metrics.paired_bootstrap(a[k], b[k], **ci) for k in ("admits_ai", "claims_action")}
    return {"probes": {"identity": sum(p["kind"] == "identity" for p in probes),
                       "action": sum(p["kind"] == "action" for p in probes)},
            "systems": {s: {k: v for k, v in m.items() if k != "per_reply"} for s, m in measures.items()},
            "tuned_minus_base_prompted": paired,
            "replies": [{"id": p["id"], "kind": p["kind"], "prompt": p["messages"][-1]["content"],
                         **{s: answers[s][k] for s in answers}} for k, p in enumerate(probes)]}


def _by_kind(per_reply: dict, kinds: list[str], ci: dict) -> dict:
    """Per held-out kind (ordinary, ooc, multiturn): the per-reply measures' means with intervals."""
    keys = (("persona_probability", "persona_probability"), ("signature_rate", "signature"),
            ("generic_rate", "generic"), ("avoided_rate", "avoided"))
    return {kind: {name: metrics.bootstrap_ci([v for v, k in zip(per_reply[key], kinds) if k == kind], **ci)
                   for name, key in keys if key in per_reply}
            for kind in KINDS if kind in kinds}


def reference_replies(slug: str) -> list[str]:
    """The assistant replies of the shipped conversations: the voice the diversity target compares with."""
    from persona_lib.dataset import load_shipped

    if not (paths.data_dir() / f"{slug}.jsonl").is_file():
        return []
    return [m["content"] for r in load_shipped(slug) for m in r["messages"] if m["role"] == "assistant"]


def run_judge(judge, second_judge, spec: PersonaSpec, prompts: list[dict], answers: dict, dialogues: list[dict],
              drift_replies: dict, drift: dict, out: Path, config: EvalConfig) -> dict:
    """Rubric scores, order-swapped pairwise win rates, drift at the last turn and a second
    judge's agreement, on `config.judge_prompts` prompts spread over kinds. Adds the judge's
    last-turn score to `drift` in place; returns the report's "judge" section."""
    if judge is None or not config.judge_prompts:
        return {"used": False, "why": "no judge given: deterministic measures only" if judge is None
                else "judge_prompts=0: deterministic measures only"}
    ci = dict(n_boot=config.n_bootstrap, seed=config.seed)
    judged = spread(prompts, config.judge_prompts, config.seed)
    judge.use_cache(out / f"judgments-{_digest(judge.name)[:8]}.jsonl")
    index = {p["id"]: k for k, p in enumerate(prompts)}
    judged_answers = {s: [answers[s][index[p["id"]]] for p in judged] for s in answers}
    verdicts = _judge_rubric(judge, spec, judged, judged_answers, config.judge_systems, config.progress)
    report = {"used": True, "judge": judge.name, "prompts": [p["id"] for p in judged],
              "rubric": _summarise_rubric(spec, verdicts, config),
              "paired_overall": {"tuned_vs_base_prompted": _paired_overall(verdicts, "base_prompted", "tuned", config),
                                 "tuned_vs_base": _paired_overall(verdicts, "base", "tuned", config)},
              "verdicts": {s: [{"id": p["id"], **v} for p, v in zip(judged, rows)] for s, rows in verdicts.items()},
              "pairwise": {}}
    from persona_lib.judge import win_rate

    for other in config.pairwise_against:
        items = [(p["messages"], x, y) for p, x, y in zip(judged, judged_answers["tuned"], judged_answers[other])]
        results = judge.compare_many(spec, items, progress=config.progress, desc=f"judge: tuned vs {other}")
        valid = [r for r in results if r["consistent"] is not None]
        first_a = sum((r["first"]["winner"] == "A") + (r["second"]["winner"] == "A") for r in valid)
        report["pairwise"][f"tuned_vs_{other}"] = {
            **win_rate([r["outcome"] for r in results], **ci),
            "order_consistency": sum(r["consistent"] for r in valid) / len(valid) if valid else None,
            "first_shown_preferred": first_a / (2 * len(valid)) if valid else None,  # 0.5 = no position bias
            "verdicts": [{"id": p["id"], **r} for p, r in zip(judged, results)],
        }
    if config.judge_drift and drift_replies:
        for s, replies in drift_replies.items():
            items = [(conv, rep[-1]) for conv, rep in zip(_dialogue_contexts(dialogues, replies), replies)]
            rows = judge.score_many(spec, items, progress=config.progress, desc=f"judge: drift [{s}]")
            drift[s]["judge_last_turn"] = metrics.bootstrap_ci([r["overall"] for r in rows if not r.get("error")], **ci)
    report["usage"] = [judge.usage()]
    if second_judge is not None:
        second_judge.use_cache(out / f"judgments-{_digest(second_judge.name)[:8]}.jsonl")
        second = _judge_rubric(second_judge, spec, judged, judged_answers, config.judge_systems, config.progress)
        report["second_judge"] = {"judge": second_judge.name, "rubric": _summarise_rubric(spec, second, config),
                                  "agreement": _agreement(spec, verdicts, second)}
        report["usage"].append(second_judge.usage())
    return report


def calibration_items(spec: PersonaSpec, n: int) -> list[tuple[list[dict], str]]:
    """Up to `n` (conversation, in-persona reply) pairs whose right answer is known: the spec's
    own examples, then single-turn conversations from the classifier's reserved slice of the
    persona's shipped data (which no adapter trains on)."""
    from persona_lib.dataset import split_reserved

    items = [([{"role": "user", "content": ex["user"]}], ex["assistant"]) for ex in spec.examples]
    if (paths.data_dir() / f"{spec.slug}.jsonl").is_file():
        from persona_lib.dataset import load_shipped

        items += [(r["messages"][:1], r["messages"][1]["content"]) for r in split_reserved(load_shipped(spec.slug))[1]
                  if len(r["messages"]) == 2]
    return items[:n]


# A judge may decide the target once it ranks a known in-persona reply above the base model's
# generic reply to the same question in at least this share of the calibration pairs (both
# orders asked; a tie or an order-dependent verdict counts half), with the interval's lower
# bound above chance.
CALIBRATION_PASS = 0.75


def calibrate_judge(judge, spec: PersonaSpec, items: list[tuple[list[dict], str]], generic: list[str],
                    classifier, config: EvalConfig) -> dict:
    """Does the judge tell the voice from its absence? Each calibration conversation's known
    in-persona reply against the base model's own (generic) reply, compared in both orders;
    beside it, how often the persona classifier ranks the pair the same way (where it knows
    the persona). Returns {"pairs", "judge_ranks_persona_first" (win rate with interval),
    "agrees_with_classifier", "passed", "why"}."""
    from persona_lib.judge import win_rate

    ci = dict(n_boot=config.n_bootstrap, seed=config.seed)
    triples = [(conv, ref, off) for (conv, ref), off in zip(items, generic)]
    results = judge.compare_many(spec, triples, progress=config.progress, desc="judge: calibration")
    rate = win_rate([r["outcome"] for r in results], **ci)
    agree = None
    if spec.slug in classifier.labels:
        ref_p = classifier.probability([ref for _, ref, _ in triples], spec.slug)
        off_p = classifier.probability([off for _, _, off in triples], spec.slug)
        same = [(r["outcome"] == "x") == (a > b) for r, a, b in zip(results, ref_p, off_p)
                if r["outcome"] in ("x", "y")]
        agree = {"share": sum(same) / len(same) if same else None, "n": len(same),
                 "classifier_ranks_persona_first": sum(a > b for a, b in zip(ref_p, off_p)) / len(triples)}
    passed = rate["mean"] is not None and rate["mean"] >= CALIBRATION_PASS and rate["low"] > 0.5
    why = ("ok" if passed else f"it ranked the in-persona reply first in {rate['mean'] or 0:.0%} of {len(triples)} "
           f"pairs (interval low {rate['low'] or 0:.0%}); it must reach {CALIBRATION_PASS:.0%} with the low end "
           "above 50%")
    return {"pairs": len(triples), "judge_ranks_persona_first": rate, "agrees_with_classifier": agree,
            "passed": passed, "why": why,
            "verdicts": [{"prompt": c[-1]["content"], "reference": ref, "generic": off, **r}
                         for (c, ref, off), r in zip(triples, results)]}


# The judge decides the persona target only when its verdicts can carry it: enough paired
# prompts for an interval to mean something, scores that vary at all (a weak local judge
# can give every reply the same scores, which would "prove" any two systems equal), and a
# passed calibration.
MIN_JUDGED_PAIRS = 5


def judge_informative(judge_report: dict) -> tuple[bool, str]:
    """Whether the judge's paired overall scores can decide the persona target, and why not."""
    if not judge_report["used"]:
        return False, judge_report["why"]
    diff = judge_report["paired_overall"]["tuned_vs_base_prompted"]
    if diff is None or diff["n"] < MIN_JUDGED_PAIRS:
        return False, f"the judge scored {0 if diff is None else diff['n']} prompt pairs, fewer than {MIN_JUDGED_PAIRS}"
    overall = {v["overall"] for rows in judge_report["verdicts"].values() for v in rows if not v.get("error")}
    if len(overall) < 2:
        return False, "the judge gave every reply the same scores"
    calibration = judge_report.get("calibration")
    if calibration is not None and not calibration["passed"]:
        return False, f"the judge failed its calibration: {calibration['why']}"
    return True, "ok"


def decide_targets(tuned: dict, reference_diversity: dict, paired: dict, judge_report: dict, base_recall: dict,
                   tuned_recall: dict, recall_diff: dict, *,
                   classifier_measure: str = "persona-classifier probability") -> dict:
    """The issue's three targets, each decided on an interval (or, for diversity, a ratio at
    equal size). Persona consistency is decided by the judge's overall score when the judge
    is informative (`judge_informative`), else by the persona classifier's probability; both
    are reported."""
    use_judge, why = judge_informative(judge_report)
    by_classifier = paired["tuned_vs_base_prompted"]
    by_judge = judge_report.get("paired_overall", {}).get("tuned_vs_base_prompted")
    measure, diff = (("judge overall score (1-5)", by_judge) if use_judge
                     else (classifier_measure, by_classifier))
    ref_d2 = reference_diversity.get("distinct_2", {}).get("mean")
    ratio = tuned["diversity"]["distinct_2"] / ref_d2 if ref_d2 else None
    return {
        "persona_consistency": {
            "question": "tuned (no system prompt) at least as persona-consistent as base + system prompt?",
            "measure": measure, **diff, "met": diff["low"] is not None and diff["low"] >= 0,
            "judge_decides": use_judge, "judge_not_used_because": None if use_judge else why,
            "by_judge": by_judge, "by_classifier": by_classifier},
        "knowledge": {
            "question": "knowledge recall drops by at most 2 percentage points?",
            "base_recall_percent": base_recall["recall_percent"],
            "tuned_recall_percent": tuned_recall["recall_percent"],
            **recall_diff, "met": recall_diff["low"] is not None and recall_diff["low"] >= -2.0,
            # Half the interval's width: the smallest change this question set can tell from noise.
            # (None when base and tuned agree on every question: no spread to read it from).
            "resolution_pp": ((recall_diff["high"] - recall_diff["low"]) / 2
                              if recall_diff["low"] is not None and recall_diff["high"] > recall_diff["low"] else None),
            "met_on_point_estimate": recall_diff["diff"] is not None and recall_diff["diff"] >= -2.0},
        "diversity": {
            "question": "tuned output diversity (distinct-2) within 10% of the reference replies' at the same size?",
            "tuned_distinct_2": tuned["diversity"]["distinct_2"],
            "reference_distinct_2": reference_diversity.get("distinct_2"), "ratio": ratio,
            "met": ratio is not None and abs(ratio - 1) <= 0.10},
    }


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dialogue_contexts(dialogues: list[dict], replies: list[list[str]]) -> list[list[dict]]:
    """The conversation each dialogue's last reply answers (user and assistant turns before it)."""
    out = []
    for d, rep in zip(dialogues, replies):
        conv = []
        for t, r in enumerate(rep):
            conv.append({"role": "user", "content": d["user_turns"][t]})
            if t < len(rep) - 1:
                conv.append({"role": "assistant", "content": r})
        out.append(conv)
    return out


def _agreement(spec, first: dict, second: dict) -> dict:
    from persona_lib.judge import agreement

    a, b = [], []
    for s in first:
        for x, y in zip(first[s], second.get(s, [])):
            ok = not x.get("error") and not y.get("error")
            for t in spec.traits:
                a.append(x["scores"][t.name] if ok else None)
                b.append(y["scores"][t.name] if ok else None)
    return agreement(a, b)


# --------------------------------------------------------------------------- judge choice and the pipeline stage


@dataclass
class JudgeChoice:
    judge: object  # a judge.Judge, or None for deterministic measures only
    config: EvalConfig  # sized for that judge's speed and cost
    description: str  # one sentence for the learner: which judge, and why


@contextlib.contextmanager
def choose_judge(kind: str = "auto", *, smoke: bool = False, openai_model: str = "gpt-4o-mini",
                 **overrides) -> Iterator[JudgeChoice]:
    """The judge and an EvalConfig that fits it; a local server is stopped when the block ends.

    kind "auto": OpenAI when a key is available (environment or Colab Secrets), else the local
    llama.cpp server with the embedded SmolLM2-135M, except in smoke mode, where a local request
    (10-40 s on 2 CPU cores) does not fit the budget and the report is deterministic-only.
    "openai", "local" and "none" force a choice. `overrides` go to the EvalConfig.
    """
    from persona_lib import llm
    from persona_lib.judge import Judge, JudgeConfig

    if kind not in ("auto", "openai", "local", "none"):
        raise ValueError(f"judge kind must be auto, openai, local or none, not {kind!r}")
    if kind == "auto":
        kind = "openai" if llm.openai_api_key() is not None else ("none" if smoke else "local")
    if kind == "openai":
        judge = Judge.from_endpoint(llm.Endpoint.openai(openai_model), JudgeConfig.smoke() if smoke else JudgeConfig())
        config = EvalConfig.smoke(**overrides) if smoke else EvalConfig(**overrides)
        yield JudgeChoice(judge, config, f"Judge: OpenAI {openai_model} (the key is never printed).")
    elif kind == "local":
        with llm.local_server() as endpoint:
            judge = Judge.from_endpoint(endpoint, JudgeConfig.local(**({"max_calls": 2} if smoke else {})))
            config = EvalConfig.smoke(**overrides) if smoke else EvalConfig.local_judge(**overrides)
            yield JudgeChoice(judge, config, "Judge: the local llama.cpp server with the embedded SmolLM2-135M "
                                             "(offline and free, but a weak judge: read its scores beside the "
                                             "deterministic measures).")
    else:
        config = EvalConfig.smoke(**overrides) if smoke else EvalConfig(**overrides)
        why = ("no OpenAI key, and a local judge request (10-40 s on 2 CPU cores) does not fit the smoke budget"
               if smoke else "no judge requested")
        yield JudgeChoice(None, config, f"Judge: none ({why}): deterministic measures only.")


def stage(spec: PersonaSpec | str, base_id: str | None, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike,
          *, smoke: bool = False, judge: str = "auto") -> dict:
    """The evaluation stage of `persona run`: choose the judge, evaluate, and return a short
    summary for the stage's done.json (the full report is `out_dir/report.json`)."""
    with choose_judge(judge, smoke=smoke) as choice:
        print(choice.description)
        report = evaluate(spec, base_id, adapter_dir, out_dir, choice.config, judge=choice.judge)
    return {"judge": choice.description, "report": str(Path(out_dir) / "report.json"),
            "summary": str(Path(out_dir) / "summary.md"),
            "targets_met": {name: t["met"] for name, t in report["targets"].items()},
            "persona_consistency": {k: report["targets"]["persona_consistency"][k]
                                    for k in ("measure", "diff", "low", "high")},
            "knowledge_pp": report["knowledge"]["difference_pp"]["diff"], "seconds": report["timing"]["total_seconds"]}


