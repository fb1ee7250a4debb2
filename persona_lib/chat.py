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
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "generating",
) -> list[str]:
    """One reply per conversation, greedy, generated `batch_size` at a time.

    Prompts are left-padded so that every row's next token sits at the same position;
    generation stops at the tokenizer's EOS (the end-of-turn token).
    """
    import torch
    from tqdm.auto import tqdm

    prompts = [
        tokenizer.apply_chat_template(with_system(c, system_prompt), tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies: list[str] = []
    try:
        bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt")
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False)
            with torch.inference_mode():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            replies += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
            bar.update(len(new))
        bar.close()
    finally:
        tokenizer.padding_side = side
    return replies
