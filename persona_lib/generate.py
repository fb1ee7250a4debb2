"""Persona-conditioned synthetic conversations over any OpenAI-compatible endpoint.

Each example is planned before anything is sent: a topic from the spec, a *user* persona and a
situation (who is asking and in what state: the Persona Hub idea, Chan et al. 2024, that
varying the persona behind a prompt is the cheapest source of diversity), a turn count, and
two of the persona's signature phrases to suggest, rotated so the batch covers them all. The
plan is deterministic: item `i` of a seed is always the same, and its id
(`<slug>-g<index>-<hash of persona/topic/scenario/turns/index>`) names it across runs.

    config = GenerateConfig(n=200)
    print(estimate(spec, config, endpoint))                 # tokens and dollars, before sending
    result = run(spec, endpoint, "runs/taskmaster/data/generated.jsonl", config)
    result.report                                           # accepted, rejected by reason, coverage

The model answers in structured output (a JSON schema of numbered turns), and every reply
goes through the same gate: parse (a bounded re-ask when the JSON is broken), the dataset's
record validation, filters (generic assistant voice, placeholders, too short, too long), and
near-duplicate search against the existing set and everything accepted so far (the dataset
module's MinHash, kept as an incremental index). Accepted records are appended and flushed to
the output JSONL the moment they arrive; a ledger next to it (`<stem>.ledger.jsonl`) records
every finished item, accepted, rejected (with the reason) or failed (a request error), with its
token usage and cost. A rerun, or a run resumed after a crash, skips every accepted or
rejected item, so nothing received is lost and only requests that were in flight (or failed)
are asked again. Requests run on a thread pool (`concurrency` in flight), with retries,
backoff and Retry-After handled by `persona_lib.llm.chat`.

For large runs on OpenAI, `write_batch_file` and `read_batch_output` speak the Batch API's
JSONL (half price, answers within 24 hours) through the same gate.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

from persona_lib import dataset, dedup, io
from persona_lib.config import Settings
from persona_lib.llm import (
    OPENAI_BASE_URL,
    Endpoint,
    RequestFailed,
    RetryPolicy,
    chat,
    client,
    redact,
    response_format,
)
from persona_lib.spec import PersonaSpec
from persona_lib.teacher import (
    Item,
    ReplyError,
    chars_per_string,
    conversation_schema,
    index_of,
    item_at,
    parse_reply,
    plan,
    prompt_messages,
    reask_message,
    spec_digest,
)

# --------------------------------------------------------------------------- prices

# USD per million tokens (input, output), from https://openai.com/api/pricing on the date below.
# Prices change: check the page, or pass GenerateConfig(price=(input, output)).
PRICES_AS_OF = "2025-08-07"
PRICES = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
}
BATCH_DISCOUNT = 0.5  # the Batch API bills half the standard price
FREE_KINDS = ("llamacpp", "ollama", "vllm")  # servers you run yourself: no per-token bill


def price_for(endpoint: Endpoint, override: tuple[float, float] | None = None) -> tuple[float, float] | None:
    """(input, output) USD per million tokens: the override, else (0, 0) for a server kind you
    run yourself, else the model's list price, else (0, 0) for any other server on this machine
    (a local proxy serving a listed model keeps its price); None when unknown."""
    if override is not None:
        return override
    if endpoint.kind in FREE_KINDS:
        return (0.0, 0.0)
    base = re.sub(r"-\d{4}-\d{2}-\d{2}$", "", endpoint.model)  # gpt-4o-mini-2024-07-18 -> gpt-4o-mini
    listed = PRICES.get(base)
    if listed is None and urlsplit(endpoint.base_url).hostname in ("127.0.0.1", "localhost", "::1"):
        return (0.0, 0.0)
    return listed


def cost_usd(prompt_tokens: int, completion_tokens: int, price: tuple[float, float] | None) -> float:
    if price is None:
        return 0.0
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6


# --------------------------------------------------------------------------- config and estimate


@dataclass
class GenerateConfig(Settings):
    n: int = 200  # records wanted in the output: the chapter asks for 200+ persona examples
    concurrency: int = 8  # requests in flight; OpenAI's lowest tier allows ~500 requests/min, 8 stays far below
    max_tokens: int = 800  # three exchanges of ~120-word replies plus JSON fit with room to spare
    temperature: float = 0.9  # high for variety; the schema keeps the shape, the filters the quality
    seed: int = 0  # picks the plan (topics, user personas, turns) and the per-request seeds
    turn_weights: tuple[float, ...] = (0.5, 0.3, 0.2)  # P(1, 2, 3 user turns): half multi-turn, for drift
    reasks: int = 2  # follow-ups on broken JSON per item; a model that fails 3 times in a row won't fix it
    max_items: int | None = None  # plan items to try at most; None: 2n + 20, room for a 50% reject rate
    spend_cap_usd: float | None = 2.0  # stop launching requests past this (200 examples on gpt-4o-mini: ~$0.10)
    price: tuple[float, float] | None = None  # (input, output) USD per 1M tokens; None: PRICES by model
    retry: RetryPolicy = field(default_factory=RetryPolicy)  # backoff for 429/5xx/time-outs
    max_reply_words: int = 180  # the spec asks for ~120 words; longer replies teach rambling
    min_words: int = 2  # per message: a one-word turn ("lucas", "TaskMaster") is a slot filled, not a conversation
    reject_generic: bool = True  # drop replies in the generic assistant voice ("As an AI...", "I hope this helps")
    near_dup_threshold: float = dedup.DEDUP_THRESHOLD  # Jaccard of user-turn shingles, as in dedup.dedup
    progress: bool = True  # a tqdm bar with accepted/rejected, tokens and dollars so far

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.max_tokens < 16:
            raise ValueError(f"max_tokens must be at least 16 (room for the JSON), got {self.max_tokens}")
        if not self.turn_weights or min(self.turn_weights) < 0 or sum(self.turn_weights) <= 0:
            raise ValueError(f"turn_weights must be non-negative with a positive sum, got {self.turn_weights}")
        if self.min_words < 1 or self.max_reply_words < self.min_words:
            raise ValueError(f"need 1 <= min_words <= max_reply_words, got {self.min_words}, {self.max_reply_words}")
        if self.reasks < 0:
            raise ValueError(f"reasks must be 0 or more, got {self.reasks}")
        if self.max_items is not None and self.max_items < self.n:
            raise ValueError(f"max_items ({self.max_items}) must be at least n ({self.n})")
        if self.spend_cap_usd is not None and self.spend_cap_usd <= 0:
            raise ValueError(f"spend_cap_usd must be positive or None, got {self.spend_cap_usd}")
        if not 0 < self.near_dup_threshold <= 1:
            raise ValueError(f"near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}")
        self.turn_weights = tuple(self.turn_weights)

    @classmethod
    def smoke(cls, **overrides) -> "GenerateConfig":
        """Two one-turn examples with short replies and no top-up (n requests, whatever comes
        back): proves the path on a CPU in seconds, even through the local 135M model."""
        n = overrides.get("n", 2)
        return cls(**{"n": n, "concurrency": 1, "max_tokens": 96, "turn_weights": (1.0,), "reasks": 1,
                      "max_items": n, "retry": RetryPolicy.fast(), "progress": False, **overrides})

    @property
    def item_limit(self) -> int:
        return self.max_items if self.max_items is not None else 2 * self.n + 20


@dataclass
class Estimate:
    items: int
    prompt_tokens: int
    completion_tokens: int  # expected, from the existing data's reply lengths
    completion_tokens_max: int  # if every reply used max_tokens
    price: tuple[float, float] | None
    cost_usd: float | None
    cost_usd_max: float | None
    prices_as_of: str

    def __str__(self) -> str:
        tokens = (f"{self.items} requests, about {self.prompt_tokens:,} prompt + {self.completion_tokens:,} "
                  f"completion tokens (at most {self.completion_tokens_max:,})")
        if self.price is None:
            return f"{tokens}; no price known for this model: set GenerateConfig(price=(input, output))"
        if self.price == (0.0, 0.0):
            return f"{tokens}; free (a server you run)"
        return (f"{tokens}; about ${self.cost_usd:.3f} (at most ${self.cost_usd_max:.3f}) at "
                f"${self.price[0]}/${self.price[1]} per 1M tokens, prices of {self.prices_as_of}")


def _tokens(text: str) -> int:
    return max(1, round(len(text) / 4))  # ~4 characters per token of English (OpenAI's rule of thumb)


def estimate(spec: PersonaSpec, config: GenerateConfig, endpoint: Endpoint, *, against: Sequence[dict] = (),
             done: int = 0, batch: bool = False) -> Estimate:
    """Tokens and cost for the `config.n - done` items still to generate, before sending anything.

    Expected completion length comes from `against` (the existing data: tokens per exchange);
    without it, 150 tokens per exchange. Batch API prices are half.
    """
    items = plan(spec, max(config.n - done, 0), config.seed, config.turn_weights)
    exchanges = [(r["messages"], sum(m["role"] == "assistant" for m in r["messages"])) for r in against]
    per_exchange = (sum(_tokens(" ".join(m["content"] for m in msgs)) for msgs, _ in exchanges)
                    / max(sum(k for _, k in exchanges), 1)) if exchanges else 150
    prompt = sum(_tokens(m["content"]) + 4 for it in items for m in prompt_messages(spec, it))
    completion = sum(min(int(it.turns * per_exchange) + 20, config.max_tokens) for it in items)
    completion_max = len(items) * config.max_tokens
    price = price_for(endpoint, config.price)
    if price is not None and batch:
        price = (price[0] * BATCH_DISCOUNT, price[1] * BATCH_DISCOUNT)
    return Estimate(len(items), prompt, completion, completion_max, price,
                    None if price is None else cost_usd(prompt, completion, price),
                    None if price is None else cost_usd(prompt, completion_max, price), PRICES_AS_OF)


# --------------------------------------------------------------------------- the gate and the files


def ledger_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".ledger.jsonl")


def report_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".report.json")


def spec_path(output: str | os.PathLike) -> Path:
    """The record of the spec `output`'s conversations were generated for."""
    output = Path(output)
    return output.with_name(output.stem + ".spec.json")


def _personas_in(output: Path) -> list[str]:
    """The persona of each complete record line of `output` (a line cut by a crash is skipped)."""
    if not output.is_file():
        return []
    personas = []
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            personas.append(str(record.get("persona")))
    return personas


def set_aside_if_the_spec_changed(spec: PersonaSpec, output: str | os.PathLike, *, record_spec: bool = True
                                  ) -> Path | None:
    """Conversations written for an earlier version of the persona must neither count toward
    this version's `n` nor reach training unseen. When the spec recorded beside `output` for
    this persona differs from `spec`, `output` and its ledger, report and spec record are
    renamed to `<name>.before-<old digest>[-k].*` (kept, never overwritten: they were paid
    for), and generation starts afresh; the spend cap then counts from zero. Returns the
    set-aside output, else None. An output without a record for this persona (made before
    records were kept) is taken as this spec's. `record_spec=False` (planning only) writes no
    record for an output that does not exist yet."""
    output = Path(output)
    record, digest = spec_path(output), spec_digest(spec)
    specs = io.read_json(record).get("specs", {}) if record.is_file() else {}
    old = specs.get(spec.slug, {}).get("spec_sha256", digest)
    files = [f for f in (output, ledger_path(output), report_path(output)) if f.is_file()]
    moved = None
    if old != digest and files:
        personas = _personas_in(output)
        if others := set(personas) - {spec.slug}:
            raise ValueError(f"{spec.slug}'s spec changed since its conversations in {output} were generated, and "
                             f"the file holds other personas' too ({', '.join(sorted(others))}): move {spec.slug}'s "
                             "records out by hand, or give each persona a file of its own")
        for f in (output, ledger_path(output)):
            _repair_tail(f)
        renamed = lambda f, tag: f.with_name(f"{output.stem}.{tag}{f.name[len(output.stem):]}")  # noqa: E731
        tag = f"before-{old[:8]}"
        k = 1
        while any(renamed(f, tag).exists() for f in [*files, record]):
            k += 1
            tag = f"before-{old[:8]}-{k}"
        for f in [*files, record]:
            f.replace(renamed(f, tag))
        moved = renamed(output, tag)
        specs = {}
        print(f"{spec.name}'s spec changed since {output.name} was written: its {len(personas)} conversations "
              f"and ledger are kept as {output.stem}.{tag}.*, apart from training, and this run generates for the "
              "spec as it is now")
    if spec.slug not in specs or old != digest:
        if record_spec or output.is_file():
            io.write_json(record, {"specs": {**specs, spec.slug: {"spec_sha256": digest, "spec": asdict(spec)}}})
    return moved


def _repair_tail(path: Path) -> bool:
    """Cut a last line that a crash left without its newline (it never finished); True if cut."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        data = path.read_bytes()
        f.truncate(data.rfind(b"\n") + 1)
    return True


def _read_existing(output: Path, slug: str) -> list[dict]:
    if not output.is_file() or output.stat().st_size == 0:
        return []
    return dataset.load_records(output, persona=slug)


def _done_ids(records: Sequence[dict], ledger_rows: Sequence[dict]) -> set[str]:
    """Items never to ask again: accepted or rejected. Failed ones (request errors) are retried."""
    return {r["id"] for r in records} | {r["id"] for r in ledger_rows if r["status"] != "failed"}


class _AppendLog:
    """An append-only JSONL file: one os.write per line on an O_APPEND descriptor, so each line
    reaches the OS in full as soon as it is written, and survives the process being killed."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, obj: dict) -> None:
        os.write(self.fd, (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class Outcome:
    """What a worker brings back for one item: messages, or the reason there are none."""

    item: Item
    messages: list[dict] | None
    reason: str = ""  # why messages is None
    detail: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    reasks: int = 0
    fatal: bool = False  # a failure no other item will escape (bad key, no credit, bad request)


# A message with fewer than two word characters, or the shape hint's "<...>" copied back.
_PLACEHOLDER = re.compile(r"\W*(\w\W*)?|<[^<>]*>", re.DOTALL)

FATAL = ("http_400", "http_401", "http_403", "http_404", "insufficient_quota")


@dataclass
class GenerationResult:
    output: Path
    ledger: Path
    report_path: Path
    report: dict
    records: list[dict]  # every record of the persona in the output, old and new

    @property
    def accepted(self) -> int:
        return self.report["accepted_total"]


class _Gate:
    """Validation, filters, dedup and the two append-only files; used from one thread only."""

    def __init__(self, spec: PersonaSpec, endpoint: Endpoint, config: GenerateConfig, output: Path,
                 against: Sequence[dict]):
        self.spec, self.endpoint, self.config, self.output = spec, endpoint, config, output
        self.ledger_file = ledger_path(output)
        self.repaired = [p.name for p in (output, self.ledger_file) if _repair_tail(p)]
        self.existing = _read_existing(output, spec.slug)
        self.ledger_rows = io.read_jsonl(self.ledger_file) if self.ledger_file.is_file() else []
        self.done_ids = _done_ids(self.existing, self.ledger_rows)
        self.index = dedup.NearDupIndex([*against, *self.existing], threshold=config.near_dup_threshold)
        self.price = price_for(endpoint, config.price)
        self.generic = [(p, dataset.phrase_pattern(p)) for p in dataset.GENERIC_PHRASES]
        self.spent = sum(r.get("cost_usd", 0.0) for r in self.ledger_rows)  # the cap spans reruns
        self.accepted = len(self.existing)
        self.new_records: list[dict] = []
        self.rejected: Counter = Counter()
        self.failed: Counter = Counter()
        self.failure_examples: list[str] = []
        self.retries: Counter = Counter()
        self.requests = self.reasks = self.prompt_tokens = self.completion_tokens = 0
        self.checked = self.near_dups = 0
        self.out = _AppendLog(output)
        self.ledger = _AppendLog(self.ledger_file)

    def close(self) -> None:
        self.out.close()
        self.ledger.close()

    def _reject_reason(self, record: dict) -> tuple[str, str]:
        problems = dataset.check_records([record], file=record["id"])
        if problems:
            return problems[0].rule, "; ".join(p.message for p in problems)
        replies = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        if self.config.reject_generic:
            hits = [phrase for phrase, pattern in self.generic if any(pattern.search(r) for r in replies)]
            if hits:
                return "generic_voice", f"a reply uses the generic assistant voice: {hits[0]!r}"
        if any(_PLACEHOLDER.fullmatch(m["content"]) for m in record["messages"]):
            return "placeholder", "a message is a placeholder (like '...' or '<user message 1>'), not text"
        shortest = min(len(m["content"].split()) for m in record["messages"])
        if shortest < self.config.min_words:
            return "too_short", f"a message has {shortest} word(s), under min_words={self.config.min_words}"
        longest = max(len(r.split()) for r in replies)
        if longest > self.config.max_reply_words:
            return "reply_too_long", f"a reply has {longest} words, over max_reply_words={self.config.max_reply_words}"
        self.checked += 1
        dup = self.index.check_and_add(record)
        if dup is not None:
            self.near_dups += 1
            return "near_duplicate", f"near-duplicate of {dup[0]} (Jaccard {dup[1]})"
        return "", ""

    def take(self, outcome: Outcome) -> str:
        """Book an outcome in the ledger: 'accepted', 'rejected' (never asked again) or 'failed'
        (a request problem: a rerun asks again)."""
        item = outcome.item
        cost = cost_usd(outcome.prompt_tokens, outcome.completion_tokens, self.price)
        self.spent += cost
        self.requests += outcome.requests
        self.reasks += outcome.reasks
        self.prompt_tokens += outcome.prompt_tokens
        self.completion_tokens += outcome.completion_tokens
        self.retries.update(outcome.retries)
        usage = {"requests": outcome.requests, "reasks": outcome.reasks, "retries": outcome.retries,
                 "prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
                 "cost_usd": round(cost, 6)}
        if outcome.messages is None and outcome.reason not in ("invalid_json", "truncated", "wrong_shape",
                                                               "wrong_turn_count"):
            self.failed[outcome.reason] += 1
            detail = redact(outcome.detail, self.endpoint.api_key)
            if len(self.failure_examples) < 5:
                self.failure_examples.append(detail)
            self.ledger.append({"id": item.id, "index": item.index, "status": "failed", "reason": outcome.reason,
                                "detail": detail[:300], **usage})
            return "failed"
        reason, detail = outcome.reason, outcome.detail
        if outcome.messages is not None:
            record = {"id": item.id, "persona": item.persona, "topic": item.topic, "source": self.endpoint.source,
                      "messages": outcome.messages}
            reason, detail = self._reject_reason(record)
            if not reason:
                self.out.append(record)  # the record first: a crash before the ledger line loses only usage
                self.ledger.append({"id": item.id, "index": item.index, "status": "accepted", **usage})
                self.accepted += 1
                self.new_records.append(record)
                return "accepted"
        self.rejected[reason] += 1
        self.ledger.append({"id": item.id, "index": item.index, "status": "rejected", "reason": reason,
                            "detail": redact(detail, self.endpoint.api_key)[:300], **usage})
        return "rejected"


def _produce(spec: PersonaSpec, endpoint: Endpoint, config: GenerateConfig, item: Item, http) -> Outcome:
    """One item, in a worker thread: request, parse, re-ask on broken JSON."""
    messages = prompt_messages(spec, item)
    schema = conversation_schema(item.turns, chars_per_string(config.max_tokens, item.turns))
    out = Outcome(item, None)
    rng = random.Random(f"{config.seed}/{item.id}/jitter")
    for ask in range(config.reasks + 1):
        try:
            reply = chat(endpoint, messages, schema=schema, max_tokens=config.max_tokens,
                         temperature=config.temperature, seed=config.seed * 1_000_003 + item.index * 31 + ask,
                         retry=config.retry, http=http, rng=rng)
        except RequestFailed as e:
            out.requests += e.attempts
            out.reason, out.detail, out.fatal = e.reason, str(e), e.reason in FATAL
            return out
        out.requests += reply.attempts
        out.prompt_tokens += reply.prompt_tokens
        out.completion_tokens += reply.completion_tokens
        for k, v in reply.retries.items():
            out.retries[k] = out.retries.get(k, 0) + v
        out.reasks = ask
        try:
            out.messages = parse_reply(reply.text, reply.finish_reason, item.turns)
            out.reason = out.detail = ""
            return out
        except ReplyError as e:
            out.reason, out.detail = e.reason, str(e)
            if e.reason not in ("invalid_json", "truncated"):
                return out
            messages = [*messages, {"role": "assistant", "content": reply.text[:4000]},
                        {"role": "user", "content": reask_message(e)}]
    return out


def _default_against(spec: PersonaSpec) -> list[dict]:
    from persona_lib.paths import data_dir

    path = data_dir() / f"{spec.slug}.jsonl"
    return dataset.load_shipped(spec.slug) if path.is_file() else []


def run(spec: PersonaSpec, endpoint: Endpoint, output: str | os.PathLike, config: GenerateConfig | None = None, *,
        against: Sequence[dict] | None = None) -> GenerationResult:
    """Generate until `output` holds `config.n` accepted records of the persona, resuming from
    whatever it and its ledger already hold; write the quality report next to it.

    `against`: records new ones must not nearly repeat (default: the persona's shipped data).
    Stops cleanly, finishing what is in flight, at the spend cap or after `config.item_limit`
    plan items; raises RequestFailed (after writing the report) on a key, credit or request
    error that every other request would hit too.
    """
    from tqdm.auto import tqdm

    config = config or GenerateConfig()
    output = Path(output)
    against = _default_against(spec) if against is None else list(against)
    if price_for(endpoint, config.price) is None and config.spend_cap_usd is not None:
        raise ValueError(f"no price known for model {endpoint.model!r}, so the spend cap cannot be enforced: "
                         "pass GenerateConfig(price=(input_usd, output_usd) per 1M tokens) or spend_cap_usd=None")
    start = time.perf_counter()
    set_aside_if_the_spec_changed(spec, output)
    gate = _Gate(spec, endpoint, config, output, against)
    for name in gate.repaired:
        print(f"{name}: cut a half-written last line left by a crash (its request will be asked again)")
    est = estimate(spec, config, endpoint, against=against, done=gate.accepted)
    per_item = (est.cost_usd or 0.0) / max(est.items, 1)
    concurrency = min(config.concurrency, endpoint.parallel or config.concurrency)
    if gate.accepted < config.n:
        print(f"{gate.accepted} of {config.n} records already in {output.name}; estimate for the rest: {est}")
    bar = tqdm(total=config.n, initial=min(gate.accepted, config.n), desc=f"generating {spec.slug}",
               disable=not config.progress, unit="rec")
    items = (item_at(spec, i, config.seed, config.turn_weights) for i in range(config.item_limit))
    stopped, fatal = "", None
    http = client(endpoint)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="generate")
    running: dict[Future, Item] = {}
    try:
        while True:
            while not stopped and gate.accepted + len(running) < config.n:
                if (config.spend_cap_usd is not None
                        and gate.spent + per_item * (len(running) + 1) > config.spend_cap_usd):
                    stopped = f"spend cap ${config.spend_cap_usd:.2f} reached (${gate.spent:.4f} spent)"
                    break
                item = next((it for it in items if it.id not in gate.done_ids), None)
                if item is None:
                    stopped = "max_items"  # the message needs the final count: written below
                    break
                running[pool.submit(_produce, spec, endpoint, config, item, http)] = item
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                running.pop(future)
                outcome = future.result()
                status = gate.take(outcome)
                if outcome.fatal and fatal is None:
                    fatal = RequestFailed(outcome.reason, redact(outcome.detail, endpoint.api_key), outcome.requests)
                    stopped = f"stopped: {outcome.reason}"
                if status == "accepted":
                    bar.update(1)
                bar.set_postfix(rejected=sum(gate.rejected.values()), failed=sum(gate.failed.values()),
                                requests=gate.requests, tokens=gate.prompt_tokens + gate.completion_tokens,
                                usd=f"{gate.spent:.4f}", refresh=False)
    finally:
        pool.shutdown(wait=not running, cancel_futures=True)  # on Ctrl-C: don't wait for in-flight requests
        bar.close()
        gate.close()
    records = _read_existing(output, spec.slug)
    if stopped == "max_items":  # the plan ran out; a stop only if the last items in flight did not fill it
        stopped = "" if len(records) >= config.n else (
            f"tried all {config.item_limit} plan items (max_items) and kept {len(records)} of {config.n}: "
            "read the rejection reasons in the report")
    report = quality_report(spec, gate, records, est, config, stopped, time.perf_counter() - start, concurrency)
    path = io.write_json(report_path(output), report)
    if stopped:
        print(stopped)
    if fatal is not None:
        raise fatal
    return GenerationResult(output, gate.ledger_file, path, report, records)


def quality_report(spec: PersonaSpec, gate: _Gate, records: list[dict], est: Estimate, config: GenerateConfig,
                   stopped: str, seconds: float, concurrency: int) -> dict:
    """What the batch holds and what it cost: JSON-ready, secret-free."""
    generated = [r for r in records if index_of(r["id"]) is not None]
    stats = dataset.dataset_stats(generated, signature_vocabulary={spec.slug: spec.signature_vocabulary})
    persona = stats["personas"].get(spec.slug, {})
    coverage = persona.get("signature_coverage", {})
    replies = [m["content"] for r in generated for m in r["messages"] if m["role"] == "assistant"]
    patterns = [dataset.phrase_pattern(p) for p in spec.signature_vocabulary]
    ledger_rejects = Counter(r["reason"] for r in io.read_jsonl(gate.ledger_file) if r["status"] == "rejected") \
        if gate.ledger_file.is_file() else Counter()
    new = len(gate.new_records)
    return {
        "persona": spec.slug,
        "endpoint": {"kind": gate.endpoint.kind, "model": gate.endpoint.model, "base_url": gate.endpoint.base_url,
                     "dialect": gate.endpoint.dialect},
        "target": config.n,
        "accepted_total": len(records),
        "accepted_this_run": new,
        "rejected_this_run": dict(gate.rejected.most_common()),
        "rejected_all_runs": dict(ledger_rejects.most_common()),
        "failed_this_run": dict(gate.failed.most_common()),
        "failure_examples": gate.failure_examples,
        "acceptance_rate": round(new / max(new + sum(gate.rejected.values()), 1), 4),
        "near_duplicate_rate": round(gate.near_dups / max(gate.checked, 1), 4),
        "requests": gate.requests,
        "requests_per_record": round(gate.requests / max(new, 1), 3),
        "retries": dict(gate.retries.most_common()),
        "reasks": gate.reasks,
        "tokens": {"prompt": gate.prompt_tokens, "completion": gate.completion_tokens},
        "cost_usd": round(gate.spent, 6),
        "estimate": asdict(est),
        "stopped": stopped or None,
        "seconds": round(seconds, 2),
        "concurrency": concurrency,
        "config": asdict(config),
        "vocabulary": {
            "phrases": len(spec.signature_vocabulary),
            "phrases_used": sum(share > 0 for share in coverage.values()),
            "coverage": round(sum(share > 0 for share in coverage.values()) / max(len(coverage), 1), 4),
            "replies_with_a_phrase": round(sum(any(p.search(t) for p in patterns) for t in replies)
                                           / max(len(replies), 1), 4),
            "per_phrase": coverage,
        },
        "generic_rate": persona.get("generic_rate", 0.0),
        "topics": stats["topics"],
        "multi_turn_share": stats["multi_turn_share"],
        "distinct_2": round(dataset.distinct_n(replies, 2), 4),
        "repaired_files": gate.repaired,
    }


def merge(shipped: Sequence[dict], generated: Sequence[dict], path: str | os.PathLike) -> list[dict]:
    """Shipped + generated records (generated ones were already deduplicated against the shipped
    set), validated together and written atomically; returns the merged list."""
    merged = dataset.validate_records([*shipped, *generated])
    io.write_jsonl(path, merged)
    return merged


# --------------------------------------------------------------------------- OpenAI Batch API files


BATCH_SPEC_MARK = "@"  # a Batch API custom_id is "<item id>@<12 hex of the spec>": answers asked for
# an earlier version of the persona are recognised when they come back, hours later


def _batch_tag(spec: PersonaSpec) -> str:
    """What follows BATCH_SPEC_MARK in a custom_id written for `spec`."""
    return spec_digest(spec)[:12]


def write_batch_file(spec: PersonaSpec, model: str, path: str | os.PathLike, config: GenerateConfig | None = None,
                     *, output: str | os.PathLike | None = None) -> Path:
    """The requests for the items still missing from `output`, as an OpenAI Batch API input file
    (one {"custom_id", "method", "url", "body"} per line) for `model`. Upload and start it with

        f = client.files.create(file=open(path, "rb"), purpose="batch")
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")

    and feed the downloaded output file to `read_batch_output`. A batch has no re-asks: broken
    answers are rejected, and the next `write_batch_file` asks for replacements.
    """
    config = config or GenerateConfig()
    done: set[str] = set()
    have = 0
    if output is not None:
        set_aside_if_the_spec_changed(spec, output, record_spec=False)
        records = _read_existing(Path(output), spec.slug)
        have = len(records)
        ledger = ledger_path(output)
        done = _done_ids(records, io.read_jsonl(ledger) if ledger.is_file() else [])
    lines, tag = [], _batch_tag(spec)
    for i in range(config.item_limit):
        if len(lines) >= config.n - have:
            break
        item = item_at(spec, i, config.seed, config.turn_weights)
        if item.id in done:
            continue
        body = {"model": model, "messages": prompt_messages(spec, item), "max_tokens": config.max_tokens,
                "temperature": config.temperature, "seed": config.seed * 1_000_003 + item.index * 31,
                "response_format": response_format(conversation_schema(item.turns), "json_schema")}
        lines.append({"custom_id": f"{item.id}{BATCH_SPEC_MARK}{tag}", "method": "POST",
                      "url": "/v1/chat/completions", "body": body})
    return io.write_jsonl(path, lines)


def read_batch_output(spec: PersonaSpec, model: str, batch_output: str | os.PathLike, output: str | os.PathLike,
                      config: GenerateConfig | None = None, *,
                      against: Sequence[dict] | None = None) -> GenerationResult:
    """Put a Batch API output file through the same gate as `run` (parse, validate, filter,
    dedup, append to `output` and its ledger) and write the quality report. Batch prices apply."""
    config = config or GenerateConfig()
    output = Path(output)
    against = _default_against(spec) if against is None else list(against)
    start = time.perf_counter()
    endpoint = Endpoint(base_url=OPENAI_BASE_URL, model=model, kind="compatible",
                        source=model)  # labels and prices only
    price = price_for(endpoint, config.price)
    batch_config = replace(config, price=None if price is None
                           else (price[0] * BATCH_DISCOUNT, price[1] * BATCH_DISCOUNT))
    set_aside_if_the_spec_changed(spec, output)  # a batch planned for an earlier spec matches no item now
    gate = _Gate(spec, endpoint, batch_config, output, against)
    tag, other_spec = _batch_tag(spec), 0
    try:
        for row in io.iter_jsonl(batch_output):
            custom_id, _, asked_for = row["custom_id"].partition(BATCH_SPEC_MARK)
            if asked_for and asked_for != tag:
                other_spec += 1
                continue
            index = index_of(custom_id)
            item = item_at(spec, index, config.seed, config.turn_weights) if index is not None else None
            if item is None or item.id != custom_id or item.id in gate.done_ids:
                continue  # another plan's request, or one already booked
            gate.done_ids.add(item.id)
            response = row.get("response") or {}
            if row.get("error") or response.get("status_code") != 200:
                error = row.get("error") or response.get("body", {}).get("error", {})
                gate.take(Outcome(item, None, reason=f"batch_http_{response.get('status_code', 'error')}",
                                  detail=json.dumps(error)[:300], requests=1))
                continue
            body = response["body"]
            choice, usage = body["choices"][0], body.get("usage") or {}
            outcome = Outcome(item, None, prompt_tokens=usage.get("prompt_tokens", 0),
                              completion_tokens=usage.get("completion_tokens", 0), requests=1)
            try:
                outcome.messages = parse_reply(choice["message"]["content"] or "", choice.get("finish_reason", ""),
                                               item.turns)
            except ReplyError as e:
                outcome.reason, outcome.detail = e.reason, str(e)
            gate.take(outcome)
    finally:
        gate.close()
    if other_spec:
        print(f"{other_spec} answers in {Path(batch_output).name} were asked for an earlier version of {spec.name}'s "
              "spec: left out (write_batch_file plans a batch for the spec as it is now)")
    records = _read_existing(output, spec.slug)
    est = estimate(spec, config, endpoint, against=against, done=gate.accepted, batch=True)
    report = quality_report(spec, gate, records, est, batch_config, "", time.perf_counter() - start, 0)
    path = io.write_json(report_path(output), report)
    return GenerationResult(output, gate.ledger_file, path, report, records)
