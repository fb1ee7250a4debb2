"""Loss on assistant tokens only, end-of-turn included: decode the label mask of real shipped
conversations and check that exactly the assistant turns are trained, in the embedded model's
ChatML template and in Llama 3's (a locally built tokenizer fixture)."""

import pytest
from fixtures.chat_tokenizers import llama3_tokenizer

from persona_lib.dataset import load_shipped
from persona_lib.masking import build_dataset, tokenize_conversation, trained_spans


@pytest.fixture(scope="module")
def chatml(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)  # the embedded model's tokenizer and template


@pytest.fixture(scope="module")
def llama3():
    return llama3_tokenizer()


@pytest.fixture(scope="module")
def shipped():
    records = load_shipped("taskmaster")
    single = [r for r in records if len(r["messages"]) == 2][:4]
    multi = [r for r in records if len(r["messages"]) >= 4][:4]
    assert len(multi) >= 2, "the shipped data should hold multi-turn conversations"
    return single + multi


def decoded_spans(tokenizer, row):
    return [tokenizer.decode(row["input_ids"][a:b]) for a, b in trained_spans(row["input_ids"], row["labels"])]


def untrained_text(tokenizer, row):
    return tokenizer.decode([t for t, lab in zip(row["input_ids"], row["labels"]) if lab == -100])


FAMILIES = [
    # (fixture, end-of-turn token, how the template writes an assistant message's content)
    ("chatml", "<|im_end|>", lambda text: text),
    ("llama3", "<|eot_id|>", lambda text: text.strip()),  # Llama 3's template trims content
]


@pytest.mark.parametrize("family, end_of_turn, written", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_exactly_the_assistant_turns_are_trained(request, shipped, family, end_of_turn, written):
    tokenizer = request.getfixturevalue(family)
    for record in shipped:
        row = tokenize_conversation(tokenizer, record["messages"])
        replies = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        assert decoded_spans(tokenizer, row) == [written(r) + end_of_turn for r in replies], record["id"]
        for tok, lab in zip(row["input_ids"], row["labels"]):
            assert lab in (-100, tok)
        rest = untrained_text(tokenizer, row)
        for m in record["messages"]:
            if m["role"] == "user":
                assert written(m["content"]) in rest, f"{record['id']}: a user turn is trained"


@pytest.mark.parametrize("family", ["chatml", "llama3"])
def test_every_span_ends_with_the_trained_end_of_turn_token(request, shipped, family):
    tokenizer = request.getfixturevalue(family)
    for record in shipped:
        row = tokenize_conversation(tokenizer, record["messages"])
        spans = trained_spans(row["input_ids"], row["labels"])
        assert len(spans) == sum(m["role"] == "assistant" for m in record["messages"])
        for _, end in spans:
            assert row["labels"][end - 1] == tokenizer.eos_token_id, "the model must learn to stop"


def test_template_scaffolding_and_default_system_prompt_are_not_trained(chatml, shipped):
    row = tokenize_conversation(chatml, shipped[0]["messages"])
    rest = untrained_text(chatml, row)
    # SmolLM2's template inserts its own system prompt when the conversation has none.
    assert "You are a helpful AI assistant named SmolLM" in rest
    assert "<|im_start|>assistant\n" in rest
    # The newline the template writes after <|im_end|> is not trained.
    assert chatml.decode(row["input_ids"][-1:]) == "\n" and row["labels"][-1] == -100


def test_a_system_message_is_context_not_target(chatml, llama3):
    messages = [{"role": "system", "content": "You are TaskMaster."}, {"role": "user", "content": "Plan my day"},
                {"role": "assistant", "content": "First, the report."}]
    for tokenizer, eot in ((chatml, "<|im_end|>"), (llama3, "<|eot_id|>")):
        row = tokenize_conversation(tokenizer, messages)
        assert decoded_spans(tokenizer, row) == ["First, the report." + eot]
        assert "You are TaskMaster." in untrained_text(tokenizer, row)


def test_truncation_keeps_the_start_and_drops_conversations_left_without_targets(chatml, shipped):
    long = max(shipped, key=lambda r: len(r["messages"]))
    full = tokenize_conversation(chatml, long["messages"])
    cut = tokenize_conversation(chatml, long["messages"], max_seq_length=60)
    assert cut["input_ids"] == full["input_ids"][:60] and cut["labels"] == full["labels"][:60]
    assert cut["full_length"] == len(full["input_ids"]) > 60
    rows = [tokenize_conversation(chatml, r["messages"]) for r in shipped]
    starts = sorted(trained_spans(r["input_ids"], r["labels"])[0][0] for r in rows)
    limit = starts[len(starts) // 2]  # cuts some conversations before their first reply
    data = build_dataset(shipped, chatml, max_seq_length=limit)
    assert data.dropped == sum(s >= limit for s in starts) >= 1
    assert data.truncated == sum(len(r["input_ids"]) > limit for r in rows)
    assert data.examples == len(shipped) - data.dropped


def test_a_template_that_rewrites_earlier_turns_is_refused(tiny_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    # Marks the last message, so a prefix renders differently from the whole conversation.
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}"
                               "{% if loop.last %} (last){% endif %}\n"
                               "{{ m['content'] }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(ValueError, match="prefix-preserving"):
        tokenize_conversation(tokenizer, messages)


def test_a_template_without_an_end_of_turn_token_is_refused(tiny_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_path)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}:\n{{ m['content'] }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant:\n{% endif %}")
    with pytest.raises(ValueError, match="never learn to stop"):
        tokenize_conversation(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])


def test_sft_trainer_trains_on_our_labels_unchanged(tiny, chatml, shipped, tmp_path):
    """TRL keeps a pre-tokenized dataset's labels; its collator pads them with -100."""
    from persona_lib.train import TrainConfig
    from persona_lib.trainer import build_trainer, sft_config

    model, _ = tiny
    data = build_dataset(shipped, chatml, 512)
    config = TrainConfig.smoke(max_seq_length=512)
    args = sft_config(config, tmp_path, precision="fp32", cuda=False, has_eval=False, backend="transformers")
    trainer = build_trainer(config, model, chatml, args, data.dataset)
    assert trainer.train_dataset["labels"] == data.dataset["labels"]
    assert trainer.train_dataset["input_ids"] == data.dataset["input_ids"]
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(shipped))])
    for k in range(len(shipped)):
        n = len(data.dataset[k]["input_ids"])
        assert batch["labels"][k, :n].tolist() == data.dataset[k]["labels"]
        assert (batch["labels"][k, n:] == -100).all() and (batch["attention_mask"][k, n:] == 0).all()
