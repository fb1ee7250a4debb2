"""Which tokens a persona model learns from: a conversation rendered with the model's own chat
template and tokenized once, with labels on the assistant turns only (each with its end-of-turn
token, so the model learns to stop) and -100 everywhere else.

    from persona_lib.masking import tokenize_conversation, trained_spans
    row = tokenize_conversation(tokenizer, record["messages"], max_seq_length=512)
    trained_spans(row["input_ids"], row["labels"])   # [(start, end), ...] of the learnt tokens

`build_dataset` does this for every record; both training backends train on its output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence


def _encode(tokenizer, text: str) -> list[int]:
    # The rendered template already holds BOS and every special token as text.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _render(tokenizer, messages, add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    return ids


def tokenize_conversation(tokenizer, messages: Sequence[dict], max_seq_length: int | None = None) -> dict:
    """Token ids of a conversation in the tokenizer's chat template, and labels that train the
    assistant turns only: each assistant message's tokens through its end-of-turn token.

    The templates of SmolLM2, Llama 3 and Phi have no `{% generation %}` markers, so the spans
    come from rendering growing prefixes: the tokens of `messages[:i]` with the generation
    prompt are where assistant turn i starts, the tokens of `messages[:i+1]` where it ends.
    Both must be exact prefixes of the whole conversation's tokens (checked), and within a span
    training stops at the last special token (`<|im_end|>`, `<|eot_id|>`, `<|end|>`), so the
    newline a template writes after it is not trained.

    Returns {"input_ids", "labels", "full_length"}; labels are -100 where there is no loss.
    `max_seq_length` cuts from the end (the start of the conversation is kept).
    """
    ids = _encode(tokenizer, _render(tokenizer, messages))
    labels = [-100] * len(ids)
    special = _special_ids(tokenizer)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        bounds = []
        for prefix, gen in ((messages[:i], True), (messages[: i + 1], False)):
            part = _encode(tokenizer, _render(tokenizer, prefix, add_generation_prompt=gen))
            if part != ids[: len(part)]:
                raise ValueError(
                    f"the chat template is not prefix-preserving at message {i + 1}: the tokens of the first "
                    f"{len(prefix)} message(s) are not a prefix of the whole conversation's tokens, so the "
                    "assistant spans cannot be located. Use a template that renders earlier turns the same "
                    "way whatever follows them.")
            bounds.append(len(part))
        start, end = bounds
        ends = [k for k in range(start, end) if ids[k] in special]
        if not ends:
            raise ValueError(
                f"assistant message {i + 1} has no end-of-turn token in the chat template's rendering; "
                "the model would never learn to stop. Check the tokenizer's special tokens and template.")
        stop = ends[-1] + 1
        labels[start:stop] = ids[start:stop]
    full = len(ids)
    if max_seq_length is not None:
        ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    return {"input_ids": ids, "labels": labels, "full_length": full}


def trained_spans(input_ids: Sequence[int], labels: Sequence[int]) -> list[tuple[int, int]]:
    """(start, end) of every run of trained positions (labels != -100)."""
    spans, start = [], None
    for k, lab in enumerate(list(labels) + [-100]):
        if lab != -100 and start is None:
            start = k
        elif lab == -100 and start is not None:
            spans.append((start, k))
            start = None
    return spans


@dataclass
class TokenizedData:
    dataset: Any  # datasets.Dataset with input_ids and labels
    examples: int
    tokens: int  # every token the model reads (no padding)
    trained_tokens: int  # tokens with a loss: the assistant turns with their end-of-turn tokens
    truncated: int  # conversations longer than max_seq_length, cut at the end
    dropped: int  # conversations whose assistant turns were cut away entirely


def build_dataset(records: Sequence[dict], tokenizer, max_seq_length: int) -> TokenizedData:
    """The pre-tokenized, label-masked dataset SFTTrainer trains on (it keeps given labels)."""
    import datasets

    rows, truncated, dropped = [], 0, 0
    for record in records:
        row = tokenize_conversation(tokenizer, record["messages"], max_seq_length)
        truncated += row.pop("full_length") > max_seq_length
        if all(lab == -100 for lab in row["labels"]):
            dropped += 1
            continue
        rows.append(row)
    if not rows:
        raise ValueError(f"no trainable conversation in {len(records)} record(s) at max_seq_length="
                         f"{max_seq_length}: raise max_seq_length or check that records have assistant turns")
    return TokenizedData(
        dataset=datasets.Dataset.from_list(rows),
        examples=len(rows),
        tokens=sum(len(r["input_ids"]) for r in rows),
        trained_tokens=sum(lab != -100 for r in rows for lab in r["labels"]),
        truncated=truncated,
        dropped=dropped,
    )
