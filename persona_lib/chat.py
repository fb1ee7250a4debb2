"""Chatting with a transformers model: batched, greedy by default, in the model's chat template."""

from __future__ import annotations

from typing import Sequence

Message = dict[str, str]


def with_system(messages: Sequence[Message], system_prompt: str | None) -> list[Message]:
    """The conversation with `system_prompt` in front (replacing any system turn), or as is."""
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + rest


def cache_kwargs(model, prompt_len: int, max_new_tokens: int) -> dict:
    """`generate` keyword arguments for the key/value cache: a static cache made for this call
    on a CPU when the (padded) prompt is at least as long as the reply; the default otherwise.

    The default dynamic cache grows by `torch.cat` at every step, copying the batch's keys and
    values each time; a static cache is written in place but attends over all its positions
    from the first step. A long prompt makes the copy the larger cost, a short one the wasted
    attention. Side by side on 2 cores (24 TaskMaster prompts, 120 new tokens, the same replies
    either way; `bench/bench_kv_cache.py --rounds 3`, results/kv_cache.json): without the
    system prompt (about 60 tokens) static was slower in 2 of 3 rounds, medians 29.0 s dynamic
    against 30.8 s static; behind the 300-token system prompt static won 2 of 3, medians 62.5 s
    against 60.8 s, in rounds from 55 s to 97 s. On this shared host the noise is larger than
    the difference, so the rule rests on the cost model above more than on these figures.
    The cache is sized for this batch because `cache_implementation="static"` sizes it for the
    longest call the model has seen, after which short prompts ran 3.5x slower. On a GPU,
    transformers would compile the model for a static cache (minutes on a T4, and Unsloth has
    its own fast path), so CUDA keeps the default.
    """
    if getattr(getattr(model, "device", None), "type", None) != "cpu" or prompt_len < max_new_tokens:
        return {}  # a GPU (or a stand-in model without a device), or a short prompt
    return static_cache(model, prompt_len + max_new_tokens)


def static_cache(model, max_cache_len: int) -> dict:
    """`generate` keyword arguments for a fresh static key/value cache of `max_cache_len` positions."""
    from transformers import StaticCache

    return {"past_key_values": StaticCache(config=model.config.get_text_config(decoder=True),
                                           max_cache_len=max_cache_len)}


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
) -> list[str]:
    """One reply per conversation, greedy, generated `batch_size` at a time.

    Prompts are left-padded so that every row's next token sits at the same position;
    generation stops at the tokenizer's EOS (the end-of-turn token). Batches are cut from the
    prompts sorted by length (longest first, so memory runs out at once if it will), which
    keeps padding small; the replies come back in the order of `conversations`.

    Why 32 by default: decoding one token reads every weight once, so on a CPU a step costs
    about the same for 1 row as for dozens (memory bandwidth, not arithmetic, is the limit).
    24 TaskMaster prompts x 64 tokens on 2 cores: 28.8 s at batch 8, 16.2 s at batch 24.
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
                    **cache_kwargs(model, batch["input_ids"].shape[1], max_new_tokens),
                )
            new = out[:, batch["input_ids"].shape[1] :]
            for i, text in zip(rows, tokenizer.batch_decode(new, skip_special_tokens=True)):
                replies[i] = text.strip()
            bar.update(len(rows))
        bar.close()
    finally:
        tokenizer.padding_side = side
    return replies
