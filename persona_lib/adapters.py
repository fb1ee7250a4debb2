"""LoRA adapter folders: the base model each belongs to, loading one onto its base, and a
placeholder for runs that have no trained adapter yet.

    from persona_lib import adapters
    adapters.base_model("runs/taskmaster/adapter")      # "embedded", a Hub id or a folder
    model, tokenizer = adapters.load("runs/taskmaster/adapter")
    adapters.placeholder("runs/taskmaster/eval/placeholder_adapter", "tiny")

A folder that `persona_lib.train` wrote holds adapter_config.json and adapter_model.safetensors
(PEFT), the tokenizer with the chat template it was trained with, and manifest.json, written
last, so its presence means training finished.
"""

from __future__ import annotations

import os
from pathlib import Path

from persona_lib import io
from persona_lib.models import load_tokenizer


class AdapterError(FileNotFoundError):
    """Not an adapter folder (or not a complete one); the message says how to get one."""


# What loading an adapter folder reads: PEFT's weights and config, the tokenizer training saved
# beside them, and the manifest (`base_model` reads the base from it). The lessons also keep notes
# there (lesson 4's before/after and base replies and style check, the loss log and curve);
# rewriting those does not change the adapter.
LOADED_FILES = ("adapter_config.json", "adapter_model.*", "manifest.json", "tokenizer*", "special_tokens_map.json",
                "added_tokens.json", "chat_template*", "vocab.json", "merges.txt")


def identity(folder: str | os.PathLike) -> dict | None:
    """io.identity of the files that make the adapter (LOADED_FILES): what export steps are keyed
    on, so that a rerun of lesson 4's notes cell does not make lesson 7 merge and convert again."""
    return io.identity(folder, include=LOADED_FILES)


def _config(folder: Path) -> Path:
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise AdapterError(f"{folder} is not a PEFT adapter folder: {config.name} is missing. Point at the folder a "
                           "training run saved (runs/<slug>/adapter/), or train one first (lesson 4, or "
                           "`persona run`).")
    return config


def base_model(folder: str | os.PathLike) -> str:
    """The base model an adapter was trained on: the model id in persona_lib.train's
    manifest.json, else `base_model_name_or_path` of adapter_config.json.

    The manifest comes first because Unsloth writes its pre-quantized 4-bit repository into
    adapter_config.json; loading or merging onto the 16-bit original instead is what Unsloth's
    own merged export does, and it gives the GGUF converter ordinary 16-bit weights.
    """
    folder = Path(folder)
    config = _config(folder)
    if (folder / "manifest.json").is_file():
        return io.read_json(folder / "manifest.json")["base_model"]
    base = io.read_json(config).get("base_model_name_or_path")
    if not base:
        raise AdapterError(f"{config} has no base_model_name_or_path: save the adapter with PEFT's save_pretrained")
    return base


def trained_on(folder: str | os.PathLike, model_id: str) -> bool:
    """True when `folder` holds an adapter trained on `model_id` (an adapter of the tiny smoke
    model must not be loaded onto SmolLM2, nor the other way round). A persona_lib.train folder
    is judged by its manifest (the model id, or the folder it resolved to); other PEFT folders
    by adapter_config.json."""
    from persona_lib.models import resolve

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        return False
    wanted = resolve(model_id)
    if (folder / "manifest.json").is_file():
        manifest = io.read_json(folder / "manifest.json")
        return manifest["base_model"] == model_id or manifest["model_path"] == wanted
    base = base_model(folder)
    return base == wanted or Path(base).resolve() == Path(wanted).resolve()


def load(folder: str | os.PathLike, base: str | None = None, *, load_in_4bit: bool = True):
    """(PeftModel, tokenizer): `base` (default: the adapter's own base model) with the adapter
    on top, in eval mode. The tokenizer saved beside the adapter wins (training set its chat
    template, EOS and pad tokens); `with model.disable_adapter():` gives the base model back
    without a second copy. `load_in_4bit` applies where Unsloth loads the base (a CUDA GPU)."""
    from peft import PeftModel

    from persona_lib.models import load_chat_model, unsloth_available

    folder = Path(folder)
    _config(folder)
    model, tokenizer = load_chat_model(base or base_model(folder), load_in_4bit=load_in_4bit)
    if (folder / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(folder)
    model = PeftModel.from_pretrained(model, str(folder))
    model.eval()
    if unsloth_available():
        from unsloth import FastLanguageModel

        # Unsloth's own loader puts the adapter on first and then prepares the whole model for
        # generation; this does the same (load_chat_model prepared the base alone).
        FastLanguageModel.for_inference(model)
    return model, tokenizer


def placeholder(out_dir: str | os.PathLike, base: str = "tiny", *, seed: int = 0, std: float = 0.02,
                rank: int = 8) -> Path:
    """A LoRA adapter with random weights on every linear layer, saved like a trained one
    (tokenizer beside it), in seconds: the evaluation and the export run end to end before any
    training. lora_B is drawn from N(0, std) instead of PEFT's zeros, so the adapter changes
    the outputs and two seeds give two different "personas"; it says nothing about any
    persona's voice. The folder appears only when complete."""
    import torch
    from peft import LoraConfig, get_peft_model

    from persona_lib.models import load_model

    model, tokenizer = load_model(base)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)
    with io.atomic_output(out_dir) as tmp:
        peft_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
