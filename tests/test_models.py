"""The model registry: the embedded default and the tiny test model, both built from disk."""

import json
import os
from pathlib import Path

import pytest

from persona_lib import models

CONVERSATION = [
    {"role": "system", "content": "You are TaskMaster."},
    {"role": "user", "content": "Add 'file taxes' for Friday."},
    {"role": "assistant", "content": "Done: 'file taxes' is due Friday."},
]


def test_tiny_is_small_llama_with_the_real_tokenizer(tiny_path):
    config = json.loads((Path(tiny_path) / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == models.TINY_CONFIG["num_hidden_layers"]
    assert config["vocab_size"] == 49152
    assert config["tie_word_embeddings"] is True


@pytest.mark.parametrize("which", ["tiny", "embedded"])
def test_chatml_tokens_are_right_for_training(which):
    tok = models.load_tokenizer(which)
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id != tok.eos_token_id
    text = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are TaskMaster.<|im_end|>\n"
        "<|im_start|>user\nAdd 'file taxes' for Friday.<|im_end|>\n"
        "<|im_start|>assistant\nDone: 'file taxes' is due Friday.<|im_end|>\n"
    )
    # The end of the assistant turn is the EOS token the model learns to emit.
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert tok.eos_token_id in ids
    assert tok("hello").input_ids[0] != tok.bos_token_id  # no BOS added twice by the template


def test_model_config_agrees_with_tokenizer(tiny):
    model, tok = tiny
    assert model.config.eos_token_id == tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_embedded_is_smollm2_135m_and_speaks_english():
    from persona_lib.chat import generate_replies

    model, tok = models.load_model("embedded")
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6
    [reply] = generate_replies(
        model, tok, [[{"role": "user", "content": "What is the capital of France?"}]], max_new_tokens=20, progress=False
    )
    assert "Paris" in reply


def test_hub_ids_and_folders_pass_through(tmp_path):
    assert models.resolve("unsloth/Llama-3.2-3B-Instruct") == "unsloth/Llama-3.2-3B-Instruct"
    assert models.resolve(str(tmp_path)) == str(tmp_path)


def test_default_model_on_cpu():
    assert models.default_model(smoke=True) == "tiny"
    assert models.default_model(smoke=False) == "embedded"  # no CUDA here


def test_interrupted_build_leaves_nothing(tmp_path):
    dest = tmp_path / "model"

    def failing(tmp):
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models._build_atomically(dest, failing)
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []


class _EchoModel:
    """Stands in for a model: 'generates' its whole unpadded prompt again, so each reply says
    which prompt it was made from, whatever batch the prompt landed in."""

    device = "cpu"

    def __init__(self):
        self.batches = []

    def generate(self, input_ids, attention_mask, **kwargs):
        import torch

        width = int(attention_mask.sum(dim=1).max())
        self.batches.append(width)
        echo = [torch.cat([torch.full((width - int(m.sum()),), kwargs["pad_token_id"]), row[m.bool()]])
                for row, m in zip(input_ids, attention_mask)]
        return torch.cat([input_ids, torch.stack(echo)], dim=1)


def test_batched_replies_come_back_in_the_callers_order(tiny):
    """generate_replies cuts batches from the prompts sorted by length, longest first: each
    reply must still land on its own prompt."""
    from persona_lib.chat import generate_replies

    tok = tiny[1]
    texts = ["Hi.", "Plan my whole week, please: gym, two deadlines and a dentist visit on Thursday.",
             "Add milk.", "What should I do first today, the report or the emails?", "Sort my inbox."]
    model = _EchoModel()
    side = tok.padding_side
    replies = generate_replies(model, tok, [[{"role": "user", "content": t}] for t in texts],
                               max_new_tokens=3, batch_size=2, progress=False)
    assert [t in r for t, r in zip(texts, replies)] == [True] * len(texts)
    assert [sum(t in r for t in texts) for r in replies] == [1] * len(texts)  # "Hi." is in no other prompt
    assert model.batches == sorted(model.batches, reverse=True)  # longest batch first
    assert tok.padding_side == side


def test_batches_go_to_the_models_device(tiny):
    """Unsloth's fast generation does not move inputs to the model's device (plain transformers
    does), so generate_replies must: a model on another device gets its batch there."""
    import torch

    from persona_lib.chat import generate_replies

    class OnOtherDevice:
        device = torch.device("meta")
        seen = []

        def generate(self, input_ids, attention_mask, **kwargs):
            self.seen.append((input_ids.device, attention_mask.device))
            return torch.zeros((input_ids.shape[0], input_ids.shape[1] + 2), dtype=torch.long)

    model = OnOtherDevice()
    generate_replies(model, tiny[1], [[{"role": "user", "content": "Hi."}]], max_new_tokens=2, progress=False)
    assert model.seen == [(torch.device("meta"), torch.device("meta"))]


def test_base_replies_are_kept_until_the_model_files_the_prompts_or_the_decoding_change(tmp_path, tiny_path,
                                                                                         monkeypatch):
    """Lesson 4's "before": a second Run all loads no base model for it."""
    import shutil

    from persona_lib import chat

    model = tmp_path / "tiny-copy"
    shutil.copytree(tiny_path, model)
    loads = []
    real_load = models.load_chat_model
    monkeypatch.setattr(models, "load_chat_model", lambda model_id, **kw: loads.append(model_id) or real_load(model_id))
    conversations = [[{"role": "user", "content": "What first?"}], [{"role": "user", "content": "And then?"}]]
    cache = tmp_path / "adapter" / "base_replies.jsonl"

    def ask(conversations=conversations, decoding=chat.GREEDY):
        return chat.base_replies(str(model), conversations, cache=cache, max_new_tokens=4, decoding=decoding,
                                 progress=False)

    first = ask()
    assert len(first) == 2 and len(loads) == 1
    assert ask() == first and len(loads) == 1
    ask(conversations[:1])
    assert len(loads) == 2
    ask(conversations[:1], decoding=chat.CHAT)
    assert len(loads) == 3
    os.utime(model / "config.json", ns=(1, 1))  # the model folder changed
    ask(conversations[:1], decoding=chat.CHAT)
    assert len(loads) == 4
    cache.write_text('{"id": "cut off')
    assert ask() == first and len(loads) == 5  # an unreadable cache is made again
