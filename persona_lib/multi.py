"""Several personas in one model: adapters switched on one base, one conditioned adapter,
a router, blending, and the persona-bleed matrix that tells the two designs apart.

Two designs hold several voices:

- **separate adapters**: one LoRA adapter per persona, all loaded onto one base model with
  PEFT (`load_adapter(path, adapter_name=...)`); `set_adapter(name)` switches the voice and
  `disable_adapter()` gives back the base. Switching flips which small matrices are added;
  the base weights stay where they are, so a switch costs milliseconds (PEFT walks the
  model's modules to flip a flag on each adapted layer), not a model load.
- **one conditioned adapter**: a single adapter trained on every persona's conversations
  with the persona named in the system prompt (`conditioning_prompt`); the prompt picks the
  voice at inference.

Persona bleed is one persona's voice leaking into another's replies. `bleed_matrix` asks
each persona the same pooled held-out prompts (so topic is held constant across rows) and
lets the persona classifier of `persona_lib.metrics` say whose voice each reply is in: rows
are the persona asked for, columns the persona attributed. The classifier's own cross-
validated matrix on reference replies (`ceiling_matrix`) is the best a model can score.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from persona_lib import paths
from persona_lib.adapters import base_model, trained_on
from persona_lib.chat import cached_replies
from persona_lib.config import Settings

PERSONAS = ("taskmaster", "captain_codebeard", "zen_coder")
BASE = "base"  # the name under which replies come from the base model, adapters disabled
CONDITIONED = "conditioned"  # adapter name of the single persona-conditioned adapter
BLEND_WEIGHTS = (0.0, 0.3, 0.5, 0.7, 1.0)
COMBINATIONS = ("cat", "svd", "linear")
FLAT = 0.05  # a blend curve whose P(second voice) moves less than this from end to end is flat

# --------------------------------------------------------------------------- where adapters live


def adapter_dir(slug: str, runs_root: str | os.PathLike | None = None) -> Path:
    """`<runs>/<slug>/adapter/`: where lesson 4 (and this lesson) save a persona's adapter."""
    return paths.run_dir(slug, runs_root) / "adapter"


def multi_dir(runs_root: str | os.PathLike | None = None) -> Path:
    """`<runs>/taskmaster/multi/`: this lesson's outputs, in the course project's run folder."""
    return paths.run_dir("taskmaster", runs_root) / "multi"


def conditioned_dir(runs_root: str | os.PathLike | None = None) -> Path:
    return multi_dir(runs_root) / "conditioned_adapter"


# --------------------------------------------------------------------------- one base, several adapters


def load_personas(model_id: str, adapters: Mapping[str, str | os.PathLike]):
    """The base model loaded once, with every adapter in `adapters` ({name: folder}) on top.

    Returns (PeftModel, tokenizer); the first adapter is active. Switch with
    `model.set_adapter(name)` (or `use_persona`), reach the base with `with
    model.disable_adapter():`. Adding a persona later is `model.load_adapter(folder, name)`.
    """
    from peft import PeftModel

    from persona_lib.models import load_chat_model

    if not adapters:
        raise ValueError("load_personas needs at least one adapter: {name: adapter folder}")
    for name, folder in adapters.items():
        base_model(folder)  # a readable error for a missing folder before the base model loads
        if name == BASE or "." in name:
            raise ValueError(f"adapter name {name!r}: use a slug without dots, and not {BASE!r} (the base model)")
    base, tokenizer = load_chat_model(model_id)
    (first, first_dir), *rest = adapters.items()
    model = PeftModel.from_pretrained(base, str(first_dir), adapter_name=first)
    for name, folder in rest:
        model.load_adapter(str(folder), adapter_name=name)
    model.eval()
    return model, tokenizer


def parameter_counts(model) -> dict[str, int]:
    """{"base", "lora"}: the model's parameters, the LoRA matrices apart. A 4-bit weight
    (bitsandbytes' Params4bit, as Unsloth loads the base on a T4) is stored packed, two values a
    byte, so its `numel()` is half the real count; its quant_state keeps the real shape."""
    counts = {"base": 0, "lora": 0}
    for name, p in model.named_parameters():
        shape = getattr(getattr(p, "quant_state", None), "shape", None)
        counts["lora" if "lora_" in name else "base"] += p.numel() if shape is None else int(math.prod(shape))
    return counts


def use_persona(model, name: str) -> None:
    """Make adapter `name` the active voice (PEFT `set_adapter`): nothing is loaded or copied."""
    if name not in model.peft_config:
        raise KeyError(f"no adapter named {name!r} is loaded; loaded: {', '.join(model.peft_config)}. "
                       f"Load it with model.load_adapter(folder, adapter_name={name!r}).")
    model.set_adapter(name)


def persona_replies(model, tokenizer, conversations: Sequence[Sequence[dict]], persona: str, *,
                    system_prompt: str | None = None, **generate) -> list[str]:
    """Replies with adapter `persona` active, or from the base model when `persona` is BASE.

    `generate` goes to `chat.generate_replies` (max_new_tokens, batch_size, progress)."""
    from persona_lib.chat import generate_replies

    generate.setdefault("desc", persona)
    if persona == BASE:
        with model.disable_adapter():
            return generate_replies(model, tokenizer, conversations, system_prompt=system_prompt, **generate)
    use_persona(model, persona)
    return generate_replies(model, tokenizer, conversations, system_prompt=system_prompt, **generate)


def switch_seconds(model, names: Sequence[str], repeats: int = 200) -> float:
    """Median wall time of one adapter switch (`set_adapter`), cycling through `names`."""
    times = []
    for k in range(repeats):
        start = time.perf_counter()
        model.set_adapter(names[k % len(names)])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reload_seconds(model_id: str, folder: str | os.PathLike) -> float:
    """Wall time to load the base model and one adapter from disk: what each change of
    persona costs when a process holds one adapter only."""
    start = time.perf_counter()
    model, _ = load_personas(model_id, {"reloaded": folder})
    seconds = time.perf_counter() - start
    del model
    return seconds


# --------------------------------------------------------------------------- the conditioned design


def conditioning_prompt(slug: str) -> str:
    """The system prompt that selects a persona in the conditioned adapter: its name, nothing
    more, so that the voice must come from training and not from a described persona."""
    from persona_lib.spec import load_spec

    return f"You are {load_spec(slug).name}."


def training_records(slug: str) -> list[dict]:
    """A persona's shipped conversations minus the slice reserved for the persona classifier
    (the classifier must not grade replies learnt from its own training text)."""
    from persona_lib.dataset import load_shipped, split_reserved

    return split_reserved(load_shipped(slug))[0]


def conditioned_records(records: Mapping[str, Sequence[dict]]) -> list[dict]:
    """Every persona's records ({slug: records}) with its conditioning prompt as system
    message, interleaved round-robin so that no stretch of training sees one voice only."""
    tagged = []
    for slug, recs in records.items():
        system = {"role": "system", "content": conditioning_prompt(slug)}
        tagged.append([{**r, "messages": [system, *[m for m in r["messages"] if m["role"] != "system"]]}
                       for r in recs])
    mixed = []
    for k in range(max(map(len, tagged), default=0)):
        mixed += [recs[k] for recs in tagged if k < len(recs)]
    return mixed


def design_replies(model, tokenizer, conversations: Sequence[Sequence[dict]], personas: Sequence[str], design: str,
                   **generate) -> dict[str, list[str]]:
    """Each persona's replies to the same conversations under one design: "separate" (adapter
    named after the persona) or "conditioned" (the CONDITIONED adapter, persona in the prompt)."""
    if design == "separate":
        return {p: persona_replies(model, tokenizer, conversations, p, desc=f"separate: {p}", **generate)
                for p in personas}
    if design == "conditioned":
        return {p: persona_replies(model, tokenizer, conversations, CONDITIONED, system_prompt=conditioning_prompt(p),
                                   desc=f"conditioned: {p}", **generate) for p in personas}
    raise ValueError(f"design must be 'separate' or 'conditioned', not {design!r}")


# --------------------------------------------------------------------------- router


# Checked top to bottom: the first persona with a keyword in the message wins. Feelings
# come before code (a stuck, frustrated coder gets the calm voice), code before tasks.
# The two coders share topics (both do debugging), so a content rule is a guess: a
# user's explicit choice always overrides it.
DEFAULT_RULES = {
    "zen_coder": ("zen", "calm", "stuck", "frustrated", "frustrating", "overwhelmed", "anxious", "imposter",
                  "simplify", "beginner", "learning to code"),
    "captain_codebeard": ("captain", "codebeard", "pirate", "code", "```", "python", "javascript", "typescript",
                          "rust", "node", "react", "sql", "postgres", "api", "git", "repo", "branch", "branches",
                          "commit", "merge", "PR", "pull request", "test", "tests", "bug", "function",
                          "refactor", "dependency", "dependencies", "security", "deploy"),
    "taskmaster": ("taskmaster", "task", "tasks", "deadline", "deadlines", "to-do", "todo", "priority",
                   "prioritize", "plan", "schedule", "overdue", "meeting", "week", "today", "habit"),
}


def _keyword_pattern(keyword: str) -> re.Pattern:
    """Whole words, any case: "task" matches "Task:" but not "taskbar"."""
    head = r"(?<!\w)" if keyword[0].isalnum() else ""
    tail = r"(?!\w)" if keyword[-1].isalnum() else ""
    return re.compile(head + re.escape(keyword) + tail, re.IGNORECASE)


@dataclass
class Router:
    """Picks the persona for a request: the one named explicitly, else the first rule whose
    keyword (whole word, any case) appears in the message, else `default`."""

    # edit me: persona -> keywords
    rules: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_RULES))
    default: str = "taskmaster"  # the product's own voice when nothing matches

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        for persona, keywords in self.rules.items():
            if isinstance(keywords, str) or not keywords or not all(k.strip() for k in keywords):
                raise ValueError(f"Router.rules[{persona!r}] must be a non-empty list of keywords, got {keywords!r}")

    def explain(self, message: str, persona: str | None = None) -> tuple[str, str]:
        """(persona, why): why is "explicit", the keyword that matched, or "default".
        Rules are read at every call, so `router.rules[...] += ("word",)` takes effect at once."""
        if persona is not None:
            return persona, "explicit"
        self.check()
        for name, keywords in self.rules.items():
            for keyword in keywords:
                if _keyword_pattern(keyword).search(message):
                    return name, f"keyword {keyword!r}"
        return self.default, "default"

    def route(self, message: str, persona: str | None = None) -> str:
        """The persona to answer `message`; `persona` (a user's explicit choice) always wins."""
        return self.explain(message, persona)[0]


def last_user_message(conversation: Sequence[dict]) -> str:
    return next(m["content"] for m in reversed(conversation) if m["role"] == "user")


def routing_matrix(router: Router, prompts: Sequence[dict], labels: Sequence[str] = PERSONAS) -> dict:
    """How the router sends held-out prompts ({"persona", "messages"}) of each persona:
    a confusion matrix (rows: the prompt's persona, columns: the routed persona)."""
    routed: dict[str, list[str]] = {}
    for p in prompts:
        routed.setdefault(p["persona"], []).append(router.route(last_user_message(p["messages"])))
    return confusion(routed, labels)


# --------------------------------------------------------------------------- blending


def blend(model, a: str, b: str, weight: float, *, combination: str = "cat", name: str | None = None) -> str:
    """Add and activate adapter (1 - weight) * a + weight * b; returns its name.

    `combination` is PEFT's `add_weighted_adapter` combination_type: "cat" stacks both
    adapters (rank r_a + r_b) and gives exactly the weighted sum of their weight updates;
    "svd" compresses that sum back to the larger rank; "linear" mixes the A and B matrices
    separately (same rank required, cross terms make it an approximation).
    """
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {', '.join(COMBINATIONS)}, not {combination!r}")
    for n in (a, b):
        if n not in model.peft_config:
            raise KeyError(f"blend: no adapter named {n!r}; loaded: {', '.join(model.peft_config)}")
    ranks = {n: model.peft_config[n].r for n in (a, b)}
    if combination == "linear" and len(set(ranks.values())) > 1:
        raise ValueError(f"combination 'linear' needs adapters of one rank, got {ranks}; use 'cat' or 'svd'")
    name = name or f"blend_{a}_{b}_{round(weight * 100):03d}"
    if name in model.peft_config:  # add_weighted_adapter silently keeps an existing adapter of that name
        model.set_adapter(a)
        model.delete_adapter(name)
    model.add_weighted_adapter([a, b], [1.0 - weight, weight], name, combination_type=combination)
    model.set_adapter(name)
    return name


def _generation_settings(generate: Mapping) -> dict:
    """The generation keywords that decide a reply (not the progress bar or the batch size)."""
    return {k: v for k, v in generate.items() if k not in ("progress", "desc", "batch_size")}


def blend_curve(model, tokenizer, a: str, b: str, conversations: Sequence[Sequence[dict]], classifier, *,
                weights: Sequence[float] = BLEND_WEIGHTS, combination: str = "cat",
                cache: str | os.PathLike | None = None, **generate) -> dict:
    """Blend a into b step by step and measure each blend's replies with the persona
    classifier: mean P(a), mean P(b), and the share of replies attributed to b, per weight.
    With `cache` (a folder) each weight's replies are saved there and reused on a rerun while
    both adapters' weights, the conversations and the generation settings are unchanged.

    `monotonic` says whether P(b) never falls as the weight on b grows, `rise` how far it
    moves from weight 0 to 1, and `trend` sums both up ("rises monotonically", "flat" when
    P(b) moves less than FLAT, "NOT monotonic"): a blend that does not move smoothly is worth
    a sentence in the notebook, not a hidden assumption.
    """
    if not conversations:
        raise ValueError("blend_curve needs at least one conversation to generate from")
    from persona_lib.io import canonical_sha256

    ia, ib = classifier.labels.index(a), classifier.labels.index(b)
    sources = [adapter_fingerprint(model, a), adapter_fingerprint(model, b)] if cache else []
    ids = [canonical_sha256(list(c))[:16] for c in conversations]
    rows = []
    for w in weights:
        def make(w=w) -> list[str]:
            name = blend(model, a, b, w, combination=combination)
            replies = persona_replies(model, tokenizer, conversations, name, desc=f"blend {w:g}", **generate)
            use_persona(model, a)
            model.delete_adapter(name)  # a blend is as big as both adapters: keep one at a time
            return replies

        if cache:
            key = canonical_sha256([a, b, sources, float(w), combination, _generation_settings(generate)])[:16]
            replies = cached_replies(Path(cache) / f"blend__{a}__{b}__{round(w * 100):03d}.jsonl", ids, key, make)
        else:
            replies = make()
        use_persona(model, a)  # as after a generated weight, also when every weight came from the cache
        probs = classifier.predict_proba(replies)
        rows.append({"weight": float(w), "p_a": float(probs[:, ia].mean()), "p_b": float(probs[:, ib].mean()),
                     "share_b": float((probs.argmax(1) == ib).mean()), "replies": replies})
    p_b = [r["p_b"] for r in rows]
    monotonic, rise = all(y >= x for x, y in zip(p_b, p_b[1:])), p_b[-1] - p_b[0]
    trend = "NOT monotonic" if not monotonic else "flat" if rise < FLAT else "rises monotonically"
    return {"a": a, "b": b, "combination": combination, "rows": rows, "monotonic": monotonic, "rise": rise,
            "trend": trend}


# --------------------------------------------------------------------------- bleed


def confusion(assigned: Mapping[str, Sequence[str]], labels: Sequence[str]) -> dict:
    """A confusion matrix from {row label: [assigned column label per item]}.

    Returns {"rows", "labels" (columns), "counts", "rates" (each row sums to 1), "diagonal"
    ({row: share of its items assigned to itself}), "mean_diagonal", "n" ({row: items}),
    "intervals" ([low, high] of every rate: a bootstrap over the row's items)}.
    """
    labels = list(labels)
    rows = list(assigned)
    unknown = sorted({a for items in assigned.values() for a in items} - set(labels))
    if unknown:
        raise ValueError(f"assigned labels {unknown} are not among the columns {labels}")
    counts = [[sum(a == col for a in assigned[row]) for col in labels] for row in rows]
    rates = [[c / max(sum(r), 1) for c in r] for r in counts]
    diagonal = {row: rates[i][labels.index(row)] if row in labels else 0.0 for i, row in enumerate(rows)}
    return {"rows": rows, "labels": labels, "counts": counts, "rates": rates, "diagonal": diagonal,
            "mean_diagonal": sum(diagonal.values()) / max(len(diagonal), 1),
            "n": {row: len(assigned[row]) for row in rows}, "intervals": cell_intervals(counts)}


def cell_intervals(counts: Sequence[Sequence[int]]) -> list[list[list[float | None]]]:
    """95% bootstrap intervals of every cell's rate, from a confusion matrix's counts: each row's
    items resampled (the rate of a cell is the mean of a 0/1 indicator over the row's items)."""
    from persona_lib.metrics import bootstrap_ci

    table = []
    for row in counts:
        n = sum(row)
        cells = []
        for c in row:
            ci = bootstrap_ci([1.0] * c + [0.0] * (n - c))
            cells.append([ci["low"], ci["high"]])
        table.append(cells)
    return table


def _columns(first: Sequence[str], labels: Sequence[str]) -> list[str]:
    """Columns in row order first (so the diagonal is the diagonal), then any other labels."""
    return [x for x in first if x in labels] + [x for x in labels if x not in first]


def bleed_matrix(replies: Mapping[str, Sequence[str]], classifier) -> dict:
    """Persona bleed: {persona asked for: its replies} -> confusion matrix of the persona the
    classifier attributes to each reply (its most probable label), plus the mean classifier
    probability of every column per row (`mean_probability`), which shows partial bleed
    that an argmax hides."""
    columns = _columns(list(replies), classifier.labels)
    order = [classifier.labels.index(c) for c in columns]
    attributed, mean_probability = {}, []
    for persona, texts in replies.items():
        probs = classifier.predict_proba(texts)
        attributed[persona] = [classifier.labels[k] for k in probs.argmax(1)] if len(texts) else []
        mean_probability.append([float(probs[:, k].mean()) if len(texts) else 0.0 for k in order])
    return {**confusion(attributed, columns), "mean_probability": mean_probability}


def ceiling_matrix(classifier, order: Sequence[str] = PERSONAS) -> dict:
    """The classifier's own cross-validated confusion matrix on reference replies (the
    reserved slice of the shipped data): the diagonal a model's replies can hope to reach.
    Rows and columns follow `order` (then any other label), as in `bleed_matrix`."""
    table = classifier.heldout.get("confusion")
    if not table:
        raise ValueError("the classifier has no held-out confusion matrix (it needs at least two conversations "
                         "per persona for cross-validation); train it on more reserved records")
    labels = _columns(order, classifier.labels)
    assigned = {t: [p for p, n in table[t].items() for _ in range(n)] for t in labels if t in table}
    return confusion(assigned, labels)


def bleed_prompts(personas: Sequence[str] = PERSONAS, per_persona: int = 10) -> list[dict]:
    """A pooled prompt set for the bleed matrix: `per_persona` ordinary held-out prompts of each
    persona, spread evenly over its file (so over its topics); a persona without a held-out
    file contributes its spec's examples. Every persona answers all of them."""
    from persona_lib.dataset import heldout_prompts
    from persona_lib.spec import load_spec

    if per_persona < 1:
        raise ValueError(f"per_persona must be at least 1, got {per_persona}")
    pool = []
    for slug in personas:
        items = [{"id": p["id"], "persona": slug, "messages": p["messages"]} for p in heldout_prompts(load_spec(slug))]
        n = min(per_persona, len(items))
        pool += [items[k * len(items) // n] for k in range(n)]
    return pool


# --------------------------------------------------------------------------- training both designs


def ensure_adapter(folder: str | os.PathLike, config, records: Sequence[dict], *, keep: bool = False,
                   progress: bool = True) -> dict:
    """The adapter of `config` trained on `records`: the one in `folder` when it was trained with
    exactly this configuration and these conversations (lesson 4's adapter, an earlier run of
    this lesson), else a new one. An interrupted training resumes from its last checkpoint.

    When `folder` holds an adapter made another way (lesson 4 trains TaskMaster for fewer
    updates than this lesson asks, or on generated data, or on another base model, or lesson 4
    was stopped mid-retrain and its manifest is gone), it is left as it is and the new adapter
    goes beside it, in `<folder>-<config and data hash>`; `keep=True` uses the old one anyway
    when only settings or data differ, and says what. Returns {"folder", "trained" (False:
    reused), "train_s" and "steps" (from the adapter's manifest), "matches" (trained with this
    config on these records), "differs" (what does not match: "data" and the config's fields)}.
    """
    from persona_lib.dataset import split_for_validation
    from persona_lib.io import read_json
    from persona_lib.pipeline import fingerprint
    from persona_lib.train import data_hash, train

    folder = Path(folder)
    # train() splits `records` the same way when no validation set is given, so the hashes compare.
    expected = data_hash(split_for_validation(records, config.validation_fraction, config.seed)[0])

    def differences(candidate: Path) -> list[str] | None:
        """What differs from the request: None when `candidate` holds no adapter (train there,
        resuming its checkpoints), "base model" or "manifest" (unfinished, or not made by
        persona_lib) or "checkpoints" (another run's, unfinished) when what is there can be
        neither used nor overwritten, else the data and the config's fields."""
        if not (candidate / "adapter_config.json").is_file():
            # Checkpoints of another run (lesson 4 stopped before it first finished) cannot be resumed
            key = candidate / "checkpoints" / "run_key.json"
            run = read_json(key) if key.is_file() else {}
            if run and (run.get("config"), run.get("train_data")) != (config.to_dict(), expected):
                return ["checkpoints"]
            return None
        if not trained_on(candidate, config.model_id):
            return ["base model"]
        if not (candidate / "manifest.json").is_file():
            return ["manifest"]
        manifest = read_json(candidate / "manifest.json")
        trained_with = manifest.get("config", {})
        fields = sorted(k for k, v in config.to_dict().items() if trained_with.get(k) != v)
        return (["data"] if manifest.get("data", {}).get("train_sha256") != expected else []) + fields

    beside = folder.with_name(f"{folder.name}-{fingerprint({'config': config.to_dict(), 'data': expected})[:10]}")
    chosen, differs = folder, differences(folder)
    # keep=True stands for other settings or data, never for another base model or an adapter
    # without a manifest (lesson 4 stopped mid-retrain deletes it first): those are not usable here.
    if differs and (not keep or set(differs) & {"base model", "manifest", "checkpoints"}):
        chosen, found, differs = beside, differs, differences(beside)
        # beside is named by this config and data: anything unfinished there is this lesson's own run
        differs = None if differs else differs
        why = {"base model": "trained on another base model", "manifest": "no manifest.json: unfinished, "
               "or not made by persona_lib", "checkpoints": "the checkpoints of another, unfinished run"
               }.get(found[0], f"{', '.join(found)} differ")
        print(f"{folder} holds an adapter made another way ({why}). It stays as it is; this lesson's "
              f"adapter is {'the one' if differs == [] else 'trained'} in {beside}")
    trained = differs is None
    if trained:
        train(config, records, chosen, resume=(chosen / "checkpoints").is_dir(), progress=progress)
        differs = []
    elif differs:
        print(f"warning: keeping {chosen}, trained with other {', '.join(differs)} than asked; "
              "its results are not those of this configuration")
    manifest = read_json(chosen / "manifest.json")
    return {"folder": str(chosen), "trained": trained, "train_s": manifest.get("timings", {}).get("train_s"),
            "steps": manifest.get("steps"), "matches": not differs, "differs": differs}


# --------------------------------------------------------------------------- the whole lesson as one stage


@dataclass
class MultiConfig(Settings):
    """Lesson 6 end to end (`run_multi`): adapters, bleed matrices, blend curve, routing."""

    model: str = "embedded"  # the base every adapter is trained on and loaded onto
    personas: tuple[str, ...] = PERSONAS  # the voices; each needs persona_data/<slug>.jsonl
    records_per_persona: int = 0  # 0: all training records (the classifier's reserved slice is never used)
    max_steps: int = -1  # >0 caps every training run (smoke runs); -1 trains TrainConfig's epochs
    min_steps: int = 60  # updates per persona at least (TrainConfig.min_steps); the conditioned run gets the sum
    # Personas that need more than `min_steps` (see `train_config`); personas not named get `min_steps`.
    min_steps_by_persona: dict[str, int] = field(default_factory=lambda: {"captain_codebeard": 120})
    prompts_per_persona: int = 10  # pooled held-out prompts: 30 prompts x 3 personas x 2 designs = 180 replies
    max_new_tokens: int = 120  # about 90 words: long enough for a voice to show, short enough for CPU
    batch_size: int = 32  # generation batch: a decoding step costs about the same for 1 row or 32
    blend_pair: tuple[str, str] = ("taskmaster", "captain_codebeard")  # the two voices the classifier tells apart best
    blend_weights: tuple[float, ...] = BLEND_WEIGHTS  # share of the second voice
    blend_prompts_per_persona: int = 3  # 9 prompts x 5 weights: a curve, not a benchmark
    combination: str = "cat"  # exact weighted sum of the two adapters' updates (see `blend`)

    def __post_init__(self):
        self.personas, self.blend_pair = tuple(self.personas), tuple(self.blend_pair)
        self.blend_weights = tuple(float(w) for w in self.blend_weights)
        problems = []
        if len(self.personas) < 2 or len(set(self.personas)) != len(self.personas):
            problems.append(f"personas={self.personas!r}: name at least two different persona slugs")
        if len(self.blend_pair) != 2 or not set(self.blend_pair) <= set(self.personas):
            problems.append(f"blend_pair={self.blend_pair!r}: two of the personas {self.personas}")
        for name in ("prompts_per_persona", "max_new_tokens", "batch_size", "blend_prompts_per_persona"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)!r}: use at least 1")
        if self.records_per_persona < 0:
            problems.append(f"records_per_persona={self.records_per_persona!r}: use 0 (all) or a positive count")
        if self.min_steps < 0:
            problems.append(f"min_steps={self.min_steps!r}: use 0 (epochs decide) or a positive step count")
        self.min_steps_by_persona = dict(self.min_steps_by_persona)
        for slug, steps in self.min_steps_by_persona.items():
            if not isinstance(steps, int) or steps < 0:
                problems.append(f"min_steps_by_persona[{slug!r}]={steps!r}: use 0 or a positive step count")
        if self.max_steps == 0 or self.max_steps < -1:
            problems.append(f"max_steps={self.max_steps!r}: use -1 (epochs) or a positive step count")
        if self.combination not in COMBINATIONS:
            problems.append(f"combination={self.combination!r}: use one of {', '.join(COMBINATIONS)}")
        if problems:
            raise ValueError("MultiConfig has problems:\n  " + "\n  ".join(problems))

    @classmethod
    def smoke(cls, **overrides) -> "MultiConfig":
        """The tiny model, a handful of records and steps, one prompt per persona: seconds."""
        preset = dict(model="tiny", records_per_persona=4, max_steps=1, prompts_per_persona=1, max_new_tokens=8,
                      blend_prompts_per_persona=1)
        return cls(**{**preset, **overrides})

    def steps(self, slug: str | None) -> int:
        """The fewest updates persona `slug`'s own adapter trains for (no slug: `min_steps`)."""
        return self.min_steps_by_persona.get(slug, self.min_steps)

    def train_config(self, slug: str | None = None, conditioned: bool = False):
        """The TrainConfig of persona `slug`'s adapter, or (`conditioned`) of the conditioned one.

        A voice is learnt in updates, not epochs. At 2 epochs, Codebeard's first 137
        conversations (100 to train on after the classifier's slice and validation) made 26
        updates against TaskMaster's 44, and its adapter reached 0.40 on the bleed diagonal;
        so each persona gets at least `min_steps` (60). Codebeard's voice is the farthest from
        the base model's and needs more: bench/bench_updates.py measured its diagonal at 0.67
        after 60 updates and 0.80 after 120, hence `min_steps_by_persona`. The conditioned
        adapter sees every persona's data, so it gets the separate runs' minimums together and
        the designs are compared at an equal budget. Without `slug`, `min_steps` applies."""
        from persona_lib.train import preset

        overrides = {"max_steps": self.max_steps} if self.max_steps > 0 else {}
        steps = sum(self.steps(s) for s in self.personas) if conditioned else self.steps(slug)
        return preset(self.model, min_steps=steps, **overrides)

    def records(self, slug: str) -> list[dict]:
        records = training_records(slug)
        return records[: self.records_per_persona] if self.records_per_persona else records


def adapter_fingerprint(model, name: str) -> str:
    """A short hash of adapter `name`'s weights as loaded: retraining an adapter changes it."""
    import hashlib

    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, adapter_name=name)
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def bleed_replies(model, tokenizer, prompts: Sequence[dict], personas: Sequence[str], design: str,
                  cache: str | os.PathLike, **generate) -> dict[str, list[str]]:
    """`design_replies` for each persona, saved to `<cache>/<design>__<persona>.jsonl` and
    reused on a rerun while the prompts, the adapter's weights and the generation settings are
    unchanged (a retrained adapter is asked again)."""
    from persona_lib.io import canonical_sha256

    ids = [p["id"] for p in prompts]
    conversations = [p["messages"] for p in prompts]
    out = {}
    for persona in personas:
        adapter = persona if design == "separate" else CONDITIONED
        key = canonical_sha256([design, persona, adapter_fingerprint(model, adapter),
                                _generation_settings(generate)])[:16]
        out[persona] = cached_replies(
            Path(cache) / f"{design}__{persona}.jsonl", ids, key,
            lambda persona=persona: design_replies(model, tokenizer, conversations, [persona], design,
                                                   **generate)[persona])
    return out


def run_multi(config: MultiConfig, runs_root: str | os.PathLike | None = None, *, progress: bool = True) -> dict:
    """Lesson 6 as one resumable stage, writing into `<runs>/taskmaster/multi/`:

    adapters (`<runs>/<slug>/adapter/`, reused when present; `conditioned_adapter/`),
    `bleed.json` + `bleed.png` (ceiling, separate, conditioned), `blend.json` + `blend.png`,
    `routing.json`, `replies/` (cached generations) and `summary.json`. Returns the summary.
    """
    from persona_lib import plots
    from persona_lib.io import write_json
    from persona_lib.metrics import train_persona_classifier

    out = multi_dir(runs_root)
    training = {slug: ensure_adapter(adapter_dir(slug, runs_root), config.train_config(slug), config.records(slug),
                                     progress=progress)
                for slug in config.personas}
    training[CONDITIONED] = ensure_adapter(
        conditioned_dir(runs_root), config.train_config(conditioned=True),
        conditioned_records({slug: config.records(slug) for slug in config.personas}), progress=progress)

    model, tokenizer = load_personas(config.model, {name: t["folder"] for name, t in training.items()})
    classifier = train_persona_classifier()
    prompts = bleed_prompts(config.personas, config.prompts_per_persona)
    gen = dict(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, progress=progress)
    replies = {design: bleed_replies(model, tokenizer, prompts, config.personas, design, out / "replies", **gen)
               for design in ("separate", "conditioned")}
    bleed = {"ceiling": ceiling_matrix(classifier, config.personas),
             **{design: bleed_matrix(r, classifier) for design, r in replies.items()},
             "prompts": [p["id"] for p in prompts], "classifier": classifier.heldout}
    write_json(out / "bleed.json", bleed)
    plots.persona_bleed_matrices({"classifier on reference replies (ceiling)": bleed["ceiling"],
                                  "separate adapters": bleed["separate"],
                                  "one conditioned adapter": bleed["conditioned"]}, path=out / "bleed.png")

    a, b = config.blend_pair
    blend_set = [p["messages"] for p in bleed_prompts(config.personas, config.blend_prompts_per_persona)]
    curve = blend_curve(model, tokenizer, a, b, blend_set, classifier, weights=config.blend_weights,
                        combination=config.combination, cache=out / "replies", **gen)
    write_json(out / "blend.json", curve)
    plots.blend_curve_plot(curve, path=out / "blend.png")
    router = Router()
    every_prompt = bleed_prompts(config.personas, per_persona=10_000)  # every ordinary held-out prompt
    routing = routing_matrix(router, every_prompt,
                             list(dict.fromkeys([*config.personas, *router.rules, router.default])))
    write_json(out / "routing.json", routing)

    summary = {
        "model": config.model,
        "personas": list(config.personas),
        "train_s": {name: t["train_s"] for name, t in training.items()},
        "reused": [name for name, t in training.items() if not t["trained"]],
        # Updates each adapter had, and any adapter kept although it was trained another way:
        # the bleed cells compare adapters of these budgets.
        "updates": {name: t["steps"] for name, t in training.items()},
        "kept_mismatched": {name: t["differs"] for name, t in training.items() if t["differs"]},
        "diagonal": {k: bleed[k]["diagonal"] for k in ("ceiling", "separate", "conditioned")},
        "mean_diagonal": {k: bleed[k]["mean_diagonal"] for k in ("ceiling", "separate", "conditioned")},
        "blend": {"pair": [a, b], "p_b": [r["p_b"] for r in curve["rows"]], "monotonic": curve["monotonic"]},
        "routing_diagonal": routing["diagonal"],
    }
    write_json(out / "summary.json", summary)
    return summary
