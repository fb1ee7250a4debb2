"""Chatting with a transformers model: batched, greedy by default, in the model's chat template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

Message = dict[str, str]


@dataclass(frozen=True)
class Decoding:
    """Greedy decoding, with the two guards a small model may need against looping replies.

    `repetition_penalty` > 1 divides the score of every token already in the prompt or the reply
    (transformers' CTRL-style penalty); `no_repeat_ngram_size` > 0 forbids any token n-gram of
    that size from occurring twice. Both see the prompt too, so a system prompt's own words are
    penalised: whether a guard helps a persona is measured, not assumed (bench/bench_decoding.py).
    """

    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        if self.repetition_penalty < 1.0:
            raise ValueError(f"repetition_penalty must be >= 1 (1 is off), got {self.repetition_penalty}")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 is off), got {self.no_repeat_ngram_size}")

    @property
    def label(self) -> str:
        parts = ([f"repetition penalty {self.repetition_penalty:g}"] if self.repetition_penalty != 1.0 else []) + (
            [f"no repeated {self.no_repeat_ngram_size}-grams"] if self.no_repeat_ngram_size else [])
        return "greedy" + (", " + ", ".join(parts) if parts else "")

    def generate_kwargs(self) -> dict:
        kw: dict = {}
        if self.repetition_penalty != 1.0:
            kw["repetition_penalty"] = self.repetition_penalty
        if self.no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kw


GREEDY = Decoding()
# What lessons 1, 4 and 5 decode with, for every system alike: the setting bench/bench_decoding.py
# chose on the embedded model (bench/results/decoding.json; a test keeps the two equal). Against
# greedy on 28 held-out TaskMaster prompts it took the tuned loop rate from 0.79 to 0.00 and raised
# the persona probability (+0.06 [0.02, 0.10]); repetition penalties stopped the loops too, but cost
# the prompted base model persona probability, since they also penalise the system prompt's words.
# Its cost: three tokens of the user's own message cannot recur either, so a reply may misspell a
# word it echoes ("jerseals" for "jerseys"). Measured on the same replies (metrics.misspelt_echoes,
# `bench_decoding.py --rescore`): 1 of 28 tuned replies, none with greedy, +0.04 [0.00, 0.11].
CHAT = Decoding(no_repeat_ngram_size=3)


def with_system(messages: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """The conversation with `system_prompt` in front (replacing any system turn), or as is."""
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + rest


def generate_replies(
    model,
    tokenizer,
    conversations: Sequence[Sequence[Message]],
    *,
    system_prompt: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "generating",
    decoding: Decoding = GREEDY,
) -> list[str]:
    """One reply per conversation, greedy (with `decoding`'s guards), `batch_size` at a time.

    Prompts are left-padded so that every row's next token sits at the same position;
    generation stops at the tokenizer's EOS (the end-of-turn token). Batches are cut from the
    prompts sorted by length (longest first, so memory runs out at once if it will), which
    keeps padding small; the replies come back in the order of `conversations`.

    Why 32 by default: decoding one token reads every weight once, so on a CPU a step costs
    about the same for 1 row as for dozens (memory bandwidth, not arithmetic, is the limit).
    24 TaskMaster prompts x 64 tokens on 2 cores: 28.8 s at batch 8, 16.2 s at batch 24.
    The key/value cache is transformers' default: a static cache sized per batch was measured
    against it (24 prompts x 120 tokens, 3 alternating rounds, bench/results/kv_cache.json)
    and was no faster beyond this machine's noise, so the project dropped it.
    """
    import torch
    from tqdm.auto import tqdm

    prompts = [
        tokenizer.apply_chat_template(with_system(c, system_prompt), tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies: list[str | None] = [None] * len(prompts)
    try:
        bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt")
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            # On the model's device: plain transformers moves inputs itself, but Unsloth's fast
            # generation path does not, and a CPU batch meets CUDA weights there.
            batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt").to(model.device)
            with torch.inference_mode():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                    **decoding.generate_kwargs(),
                )
            new = out[:, batch["input_ids"].shape[1] :]
            for i, text in zip(rows, tokenizer.batch_decode(new, skip_special_tokens=True)):
                replies[i] = text.strip()
            bar.update(len(rows))
        bar.close()
    finally:
        tokenizer.padding_side = side
    return replies


def cached_replies(path, ids: Sequence[str], key: str, make) -> list[str]:
    """The replies saved in `path` (JSONL: id, key, reply) when they answer exactly `ids` under
    `key` (a hash of everything that decides them), else `make()`'s, saved there for next time."""
    from pathlib import Path

    from persona_lib.io import read_jsonl, write_jsonl

    path = Path(path)
    try:
        rows = read_jsonl(path) if path.is_file() else []
        if [r["id"] for r in rows] == list(ids) and all(r["key"] == key for r in rows):
            return [r["reply"] for r in rows]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # unreadable (cut off, edited by hand): made again and replaced
    replies = make()
    write_jsonl(path, [{"id": i, "key": key, "reply": r} for i, r in zip(ids, replies)])
    return replies


def base_replies(model_id: str, conversations: Sequence[Sequence[Message]], *, cache, max_new_tokens: int = 128,
                 decoding: Decoding = GREEDY, load_in_4bit: bool = True, progress: bool = True) -> list[str]:
    """The base model's replies to `conversations` (as given: no system prompt added), loaded
    with `models.load_chat_model` and freed again. Kept in `cache` (a JSONL file) and reused
    while the model's files, how it is loaded (Unsloth on which GPU, in 4-bit or not, else
    the CPU's fp32), the library versions, the conversations and the decoding are the same: a
    second Run all of lesson 4 loads no base model for them."""
    from dataclasses import asdict
    from importlib import metadata
    from pathlib import Path

    import torch

    from persona_lib.io import canonical_sha256, identity
    from persona_lib.models import load_chat_model, resolve, unsloth_available

    path = resolve(model_id)
    gpu = unsloth_available()
    loader = {"unsloth": gpu, "load_in_4bit": load_in_4bit and gpu,
              # Unsloth's dtype=None is fp16 on a T4 and bf16 where the GPU has it
              "gpu": torch.cuda.get_device_name(0) if gpu else None,
              "versions": {name: metadata.version(name) for name in ("torch", "transformers", "peft")}}
    model_files = identity(path) if Path(path).is_dir() else path  # a Hub id names one model
    key = canonical_sha256([model_files, loader, max_new_tokens, asdict(decoding)])[:16]
    ids = [canonical_sha256(list(c))[:16] for c in conversations]

    def make() -> list[str]:
        model, tokenizer = load_chat_model(model_id, load_in_4bit=load_in_4bit)
        return generate_replies(model, tokenizer, conversations, max_new_tokens=max_new_tokens, decoding=decoding,
                                progress=progress, desc="base")

    return cached_replies(cache, ids, key, make)
