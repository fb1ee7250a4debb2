"""Export parity: does the GGUF file answer as the Hugging Face model it came from? Greedy replies
of both on the same held-out prompts, compared token by token and by the persona's signature
phrases, with bootstrap intervals (lesson 7's parity table)."""

from __future__ import annotations

import os
from typing import Mapping, Sequence

from persona_lib.llama_runtime import gguf_prompt, greedy_ids, load_gguf
from persona_lib.models import load_tokenizer


def hf_greedy_ids(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, *, batch_size: int = 32,
                  progress: bool = True) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, greedy reply ids up to the EOS, excluded) for each prompt text, batched
    with left padding like `persona_lib.chat.generate_replies`."""
    import torch
    from tqdm.auto import tqdm

    # llama.cpp ends a reply at any end-of-generation token (<|endoftext|> as well as <|im_end|>):
    # cut HF's replies at the same ones, so that a difference is the model's, not the runtime's.
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    prompt_ids, replies = [], []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="HF greedy", disable=not progress):
            batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)  # as in chat.generate_replies
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            for row, mask, new in zip(batch["input_ids"], batch["attention_mask"], new_tokens):
                prompt_ids.append(row[mask.bool()].tolist())
                ids = new.tolist()
                ends = [i for i, t in enumerate(ids) if t in stop]
                replies.append(ids[:ends[0]] if ends else ids)
    finally:
        tokenizer.padding_side = side
    return prompt_ids, replies


def agreement_intervals(agree: Sequence[float], **ci) -> dict:
    """Bootstrap intervals over the prompts for the mean token agreement and the share of
    identical replies ({"token_agreement_interval", "identical_replies_interval"})."""
    from persona_lib.metrics import bootstrap_ci

    return {"token_agreement_interval": bootstrap_ci(agree, **ci),
            "identical_replies_interval": bootstrap_ci([float(a == 1.0) for a in agree], **ci)}


def token_agreement(a: Sequence[int], b: Sequence[int]) -> float:
    """Share of greedy tokens two systems agree on before they first diverge: the common
    prefix over the longer reply (1.0 for two identical replies, including two empty ones)."""
    longest = max(len(a), len(b))
    if longest == 0:
        return 1.0
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same / longest


def signature_flags(replies: Sequence[str], phrases: Sequence[str]) -> list[float]:
    """Per reply, 1.0 when it uses any signature phrase of the persona: the deterministic
    persona measure of export parity (persona_lib.metrics holds the full set)."""
    from persona_lib.metrics import any_phrase

    return any_phrase(replies, phrases)


def export_parity(hf_dir: str | os.PathLike, ggufs: Mapping[str, str | os.PathLike],
                  conversations: Sequence[Sequence[dict]], phrases: Sequence[str], *,
                  ids: Sequence[str] | None = None, max_new_tokens: int = 64,
                  n_ctx: int = 2048, n_boot: int = 2000, seed: int = 0, progress: bool = True) -> dict:
    """The same conversations, greedy, through the HF model and each GGUF.

    Each GGUF builds its prompt from its own embedded chat template and tokenizer, so a
    template or tokenizer fault shows up already in the f16 file, and what the quantized file
    adds on top of f16 is quantization loss. Per system: the signature-phrase rate, its paired
    bootstrap difference from HF over prompts (goal: the interval contains 0), the greedy
    token agreement with HF, the share of identical replies, and the share of prompts whose
    token ids equal HF's.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    from persona_lib.metrics import bootstrap_ci, paired_bootstrap

    ids = list(ids) if ids is not None else [f"prompt-{i}" for i in range(len(conversations))]
    tokenizer = load_tokenizer(hf_dir)
    # On a GPU in 16-bit (the merged 3B model in fp32 on the CPU is ~12.9 GB, more than Colab
    # free's RAM); on a CPU in fp32, where 16-bit matmuls are slow or emulated.
    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float16 if cuda else torch.float32,
                                                 device_map="cuda" if cuda else None)
    texts = [tokenizer.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in conversations]
    hf_prompts, hf_ids = hf_greedy_ids(model, tokenizer, texts, max_new_tokens, progress=progress)
    del model
    replies = {"hf": [tokenizer.decode(r, skip_special_tokens=True).strip() for r in hf_ids]}
    tokens = {"hf": hf_ids}
    same_prompt: dict[str, list[bool]] = {}
    for name, path in ggufs.items():
        llm = load_gguf(path, n_ctx=n_ctx)
        tokens[name], replies[name], same_prompt[name] = [], [], []
        for conv, ref in tqdm(list(zip(conversations, hf_prompts)), desc=f"{name} greedy", disable=not progress):
            prompt = llm.tokenize(gguf_prompt(llm, conv).encode(), add_bos=False, special=True)
            same_prompt[name].append(prompt == ref)
            out = greedy_ids(llm, prompt, max_new_tokens)
            tokens[name].append(out)
            replies[name].append(llm.detokenize(out).decode("utf-8", errors="replace").strip())
        llm.close()
    flags = {name: signature_flags(r, phrases) for name, r in replies.items()}
    ci = dict(n_boot=n_boot, seed=seed)
    systems = {"hf": {"signature_rate": bootstrap_ci(flags["hf"], **ci)}}
    for name in ggufs:
        agree = [token_agreement(a, b) for a, b in zip(tokens["hf"], tokens[name])]
        systems[name] = {
            "signature_rate": bootstrap_ci(flags[name], **ci),
            "signature_diff_vs_hf": paired_bootstrap(flags["hf"], flags[name], **ci),
            "token_agreement": sum(agree) / len(agree),
            "identical_replies": sum(a == 1.0 for a in agree) / len(agree),
            "prompt_tokens_equal": sum(same_prompt[name]) / len(same_prompt[name]),
            **agreement_intervals(agree, **ci),
        }
    rows = [{"id": pid, "messages": list(conv),
             **{f"{name}_reply": replies[name][i] for name in replies},
             **{f"{name}_signature": flags[name][i] for name in flags},
             **{f"{name}_agreement": token_agreement(tokens["hf"][i], tokens[name][i]) for name in ggufs}}
            for i, (pid, conv) in enumerate(zip(ids, conversations))]
    return {"n": len(conversations), "max_new_tokens": max_new_tokens, "systems": systems, "rows": rows}
