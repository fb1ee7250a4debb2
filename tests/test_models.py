"""The model registry: the embedded default and the tiny test model, both built from disk."""

import json
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
