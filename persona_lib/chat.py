"""Chatting with a transformers model: batched, greedy by default, in the model's chat template."""

from __future__ import annotations

from typing import Sequence

Message = dict[str, str]


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
) -> list[str]:
    """One reply per conversation, greedy, generated `batch_size` at a time.

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
                )
            new = out[:, batch["input_ids"].shape[1] :]
            for i, text in zip(rows, tokenizer.batch_decode(new, skip_special_tokens=True)):
                replies[i] = text.strip()
            bar.update(len(rows))
        bar.close()
    finally:
        tokenizer.padding_side = side
    return replies
