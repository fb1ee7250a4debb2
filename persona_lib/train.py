"""LoRA fine-tuning for a persona: one TrainConfig, two backends, the same artifacts.

    from persona_lib.train import TrainConfig, train
    result = train(TrainConfig.cpu(), records, "runs/taskmaster/adapter")

Backends (`TrainConfig.backend="auto"` picks, `choose_backend` decides):

- ``unsloth``: a CUDA GPU with unsloth installed (Colab). Unsloth's FastLanguageModel loads the
  model in 4-bit and adds LoRA with its own gradient checkpointing; TRL's SFTTrainer trains.
- ``transformers``: everywhere else (a CPU box, a GPU without unsloth). transformers + PEFT,
  trained by the same SFTTrainer with a configuration measured for speed on CPU.

Both train on the same pre-tokenized dataset (`masking.build_dataset`), where the loss covers the
assistant turns only, each with its end-of-turn token so the model learns to stop. Both leave
the same folder behind:

    <output_dir>/adapter_config.json, adapter_model.safetensors   the PEFT adapter
    <output_dir>/tokenizer.json, tokenizer_config.json, chat_template.jinja   the tokenizer and
                                                                  the chat template trained on
    <output_dir>/train_config.yaml   the TrainConfig, loadable with TrainConfig.from_yaml
    <output_dir>/loss_log.jsonl      one line per logged step: {"step", "epoch", "loss"} or "eval_loss"
    <output_dir>/loss_curve.png      train and validation loss
    <output_dir>/manifest.json       config, versions, data hash, timings, metrics (written last)
    <output_dir>/checkpoints/        while training; removed after success (keep_checkpoints keeps them)

A run killed mid-way continues from its last checkpoint with `train(..., resume=True)`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from persona_lib import io
from persona_lib.config import Settings
from persona_lib.dataset import shipped_splits, split_for_validation
from persona_lib.masking import build_dataset
from persona_lib.models import COLAB_DEFAULT, EMBEDDED, TINY, load_tokenizer
from persona_lib.trainer import build_trainer, sft_config, training_callbacks

# All attention and MLP projections of Llama-family models (SmolLM2, Llama 3, Qwen, Mistral);
# Phi-3/4-mini fuse some of them, and match_target_modules maps these names onto theirs.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BACKENDS = ("auto", "unsloth", "transformers")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup")
LOSSES = ("target_logits", "nll", "chunked_nll")
CPU_ATTENTIONS = ("auto", "eager", "sdpa")
# "auto" on a CPU: the eager implementation up to this many tokens (at max_seq_length 512 on the
# embedded model, best of 3 rounds side by side on an AMD EPYC with AVX512-BF16: 1.05x faster than
# SDPA on TaskMaster's conversations, bench/results/train_cpu.json, and 1.07x on Captain
# Codebeard's, the longest, train_cpu_codebeard.json; in fp32 on an AMD EPYC without AVX-512 the
# two were level, 193.5 against 186.5-189.4 tokens/s, train_cpu_no_avx512.json), SDPA beyond it,
# where eager's batch x heads x length^2 attention matrices, kept for the backward pass, grow large.
EAGER_UP_TO = 1024


@dataclass
class TrainConfig(Settings):
    """Everything a persona training run needs; the same object serves notebook, CLI and YAML.

    The defaults are the offline CPU default (the embedded SmolLM2-135M); `colab_t4()` is the
    Colab preset and `smoke()` the seconds-long CI run.
    """

    model_id: str = EMBEDDED  # base model: "embedded" (SmolLM2-135M, offline), "tiny", a Hub id or a folder
    backend: str = "auto"  # auto: Unsloth on a CUDA GPU with unsloth installed, else transformers + PEFT
    # LoRA: style transfer moves few directions, so a small rank suffices.
    lora_r: int = 16  # LoRA rank: 16 to start; 8 suffices for a simple voice, 32-64 is for new tasks
    lora_alpha: int = 16  # LoRA scale alpha/r; alpha = r gives 1, as in Unsloth's examples; a new rank wants a new rate
    lora_dropout: float = 0.0  # 0: a few hundred examples for 1-3 epochs barely overfit; Unsloth's fast path needs 0
    # Layers that get an adapter: all attention and MLP projections (tone lives in the MLPs too).
    target_modules: tuple[str, ...] = TARGET_MODULES  # every attention and MLP projection
    # Optimisation
    learning_rate: float = 1e-3  # measured best for the 135M model in 2 epochs; the T4 preset keeps LoRA's usual 2e-4
    num_epochs: float = 2.0  # passes over the data: a voice is learnt in 1-3; more memorises the examples' wording
    max_steps: int = -1  # >0 stops after that many optimizer steps (smoke runs, benchmarks)
    min_steps: int = 0  # >0: a small dataset trains this many steps instead of its few epochs (see `train`)
    batch_size: int = 4  # conversations per forward pass; on CPU 4 of similar length keep the matmuls large
    gradient_accumulation_steps: int = 2  # passes summed per update: effective batch 8, smooth enough on small data
    warmup_ratio: float = 0.05  # share of steps with a rising learning rate: small first updates of fresh LoRA weights
    weight_decay: float = 0.01  # Unsloth's value: a mild pull of the update towards zero, harmless at this scale
    lr_scheduler: str = "linear"  # linear decay to 0 after warm-up, as in Unsloth's and TRL's examples
    optim: str = "adamw_torch"  # fp32 AdamW on CPU; the T4 preset uses bitsandbytes' 8-bit AdamW
    max_seq_length: int = 512  # tokens per conversation: every shipped one fits (longest 500); longer are cut, counted
    seed: int = 3407  # Unsloth's default random_state: same seed, same data order, same LoRA init
    validation_fraction: float = 0.1  # held out of `records` (by topic) when no eval_records are given
    eval_steps: int = -1  # steps between validation passes; -1: up to six, evenly spaced; 0: at the end
    save_steps: int = 10  # steps between checkpoints: about a minute of CPU training; adapter + optimizer ~60 MB
    save_total_limit: int = 2  # checkpoints kept: two, so one is whole even when a kill cuts a save
    logging_steps: int = 1  # every step in the loss log: runs are a few dozen steps long
    precision: str = "auto"  # auto: bf16 where the GPU or CPU has it natively; else fp16 on a GPU, fp32 on a CPU
    load_in_4bit: bool = False  # QLoRA (NF4 + double quantization); needs a CUDA GPU
    gradient_checkpointing: bool = False  # saves memory at ~30% more compute: on for a T4, off on CPU
    group_by_length: bool = True  # batches of similar length: padding waste drops from ~27% to ~6% at batch 4
    loss: str = "target_logits"  # LM head only at labelled positions (29% skip the 49k-vocab projection); or TRL's nll
    cpu_autocast: bool = True  # CPU with bf16 base weights: LoRA matmuls in bf16 too (fp32 LoRA weights), ~1.2x
    cpu_attention: str = "auto"  # CPU attention kernel: auto = eager up to 1024 tokens (~1.1x over sdpa), sdpa above
    cpu_keep_memory: bool = False  # Linux: freed memory kept between steps: 0.98-1.05x, ~0.4 GB more held
    keep_checkpoints: bool = False  # keep checkpoints after a successful run; off: deleted (the adapter is the result)

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        problems = []

        def need(ok: bool, name: str, fix: str):
            if not ok:
                problems.append(f"{name}={getattr(self, name)!r}: {fix}")

        need(bool(str(self.model_id).strip()), "model_id", "give a model id, 'embedded' or 'tiny'")
        need(self.backend in BACKENDS, "backend", f"use one of {', '.join(BACKENDS)}")
        need(self.lora_r >= 1, "lora_r", "use a positive rank (8, 16, 32, 64)")
        need(self.lora_alpha > 0, "lora_alpha", "use a positive alpha, usually equal to lora_r")
        need(0 <= self.lora_dropout < 1, "lora_dropout", "use a value in [0, 1), usually 0")
        need(len(self.target_modules) > 0 and all(isinstance(m, str) and m for m in self.target_modules),
             "target_modules", f"name the projections to adapt, e.g. {list(TARGET_MODULES)}")
        need(0 < self.learning_rate <= 0.1, "learning_rate", "use a value in (0, 0.1]; LoRA usually 1e-4 to 5e-4")
        need(self.num_epochs > 0, "num_epochs", "use a positive number of epochs (1-3 for style)")
        need(self.max_steps == -1 or self.max_steps >= 1, "max_steps", "use -1 (train num_epochs) or a positive count")
        need(self.min_steps >= 0, "min_steps", "use 0 (epochs decide) or a positive step count")
        need(self.batch_size >= 1, "batch_size", "use at least 1")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "use at least 1")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "use a fraction in [0, 1), e.g. 0.05")
        need(self.weight_decay >= 0, "weight_decay", "use a non-negative value")
        need(self.lr_scheduler in SCHEDULERS, "lr_scheduler", f"use one of {', '.join(SCHEDULERS)}")
        need(self.optim in OPTIMIZERS, "optim", f"use one of {', '.join(OPTIMIZERS)}")
        need(self.max_seq_length >= 32, "max_seq_length", "use at least 32 tokens (512 fits the shipped data)")
        need(0 <= self.validation_fraction < 0.5, "validation_fraction", "use a fraction in [0, 0.5), e.g. 0.1")
        need(self.eval_steps >= -1, "eval_steps",
             "use -1 (up to six points per run), 0 (validate only at the end) or a positive step count")
        need(self.save_steps >= 1, "save_steps", "use a positive step count")
        need(self.save_total_limit >= 1, "save_total_limit", "keep at least one checkpoint to resume from")
        need(self.logging_steps >= 1, "logging_steps", "use a positive step count")
        need(self.precision in PRECISIONS, "precision", f"use one of {', '.join(PRECISIONS)}")
        need(self.loss in LOSSES, "loss", f"use one of {', '.join(LOSSES)}")
        need(self.cpu_attention in CPU_ATTENTIONS, "cpu_attention", f"use one of {', '.join(CPU_ATTENTIONS)}")
        if problems:
            raise ValueError("TrainConfig has problems:\n  " + "\n  ".join(problems))

    # ------------------------------------------------------------------ presets

    @classmethod
    def cpu(cls, **overrides) -> "TrainConfig":
        """The offline default: the embedded SmolLM2-135M in fp32 on a CPU (the dataclass defaults)."""
        return cls(**overrides)

    @classmethod
    def colab_t4(cls, **overrides) -> "TrainConfig":
        """A free Colab T4 (15 GB, no bf16): a 3B instruct model in 4-bit with Unsloth."""
        preset = dict(
            model_id=COLAB_DEFAULT,
            load_in_4bit=True,  # a 3B model in 4-bit is ~2.5 GB of weights: room for activations at 2048
            gradient_checkpointing=True,  # Unsloth's offloaded checkpointing: the T4's memory is the limit
            batch_size=2,  # 2 x 4 accumulation = the same effective batch 8 as on CPU
            gradient_accumulation_steps=4,
            optim="adamw_8bit",  # 8-bit optimizer states: a quarter of fp32 AdamW's memory
            learning_rate=2e-4,  # LoRA's usual rate for a 3B model (1e-3 is the 135M model's)
            num_epochs=3.0,  # a 3B model moves less per step than the 135M one; ~200 examples x 3 ~ 75 steps
            eval_steps=25,
            save_steps=25,
            loss="nll",  # Unsloth computes its own fused cross-entropy on the GPU
        )
        return cls(**{**preset, **overrides})

    @classmethod
    def smoke(cls, **overrides) -> "TrainConfig":
        """The tiny random-init model, a few steps: the whole path in seconds, for tests and CI."""
        preset = dict(model_id=TINY, max_steps=6, batch_size=2, gradient_accumulation_steps=1,
                      max_seq_length=256, eval_steps=3, save_steps=3, warmup_ratio=0.0)
        return cls(**{**preset, **overrides})


def match_target_modules(requested: Sequence[str], available: set[str]) -> list[str]:
    """The model's own names for the requested projections. Phi-3 / Phi-4-mini fuse q, k, v into
    `qkv_proj` and gate, up into `gate_up_proj`; asking PEFT for q_proj there would silently adapt
    only o_proj and down_proj."""
    fused = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
             "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
    out: list[str] = []
    for name in requested:
        name = name if name in available else fused.get(name, name)
        if name in available and name not in out:
            out.append(name)
    missing = [n for n in requested if n not in available and fused.get(n) not in available]
    if missing:
        raise ValueError(f"target_modules {missing} are not linear layers of this model; it has "
                         f"{', '.join(sorted(available))}")
    return out


def _linear_names(model) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] != "lm_head"}


# Learning rate on the 135M model: 1e-3, not LoRA's usual 2e-4. Measured with TrainConfig.cpu()
# on the shipped TaskMaster split (2 epochs, 44 steps), scored on 28 held-out prompts without
# a system prompt and 38 knowledge questions:
#   lr      validation loss (step 11 -> 44)   signature rate   distinct-2   knowledge recall
#   base    -                                 0%               0.60         15.7%
#   2e-4    3.64 -> 3.41                      0%               0.51         17.1%
#   1e-3    3.32 -> 3.12                      14%              0.55         16.1%
# At 2e-4 the validation loss is still falling steeply when the budget ends and no signature
# phrase appears; at 1e-3 it is lower at every point, with no sign of memorising, diversity
# falls a little (as it did at 2e-4) and recall does not drop (bench/results/train_full_embedded.json
# is the 2e-4 run, train_cpu_full.json the 1e-3 one). A small model's LoRA update needs a
# larger step in so few steps; the 3B model of the Colab preset keeps 2e-4.


# --------------------------------------------------------------------------- pure decisions


def choose_backend(requested: str, *, cuda: bool, unsloth_installed: bool) -> str:
    """'unsloth' or 'transformers' for a TrainConfig.backend on this machine."""
    if requested == "auto":
        return "unsloth" if cuda and unsloth_installed else "transformers"
    if requested == "unsloth" and not (cuda and unsloth_installed):
        why = "no CUDA GPU is visible" if not cuda else "unsloth is not installed"
        raise RuntimeError(f"backend='unsloth' but {why}. Use backend='auto' or 'transformers' "
                           "(transformers + PEFT runs on any machine), or run on a Colab GPU runtime.")
    return requested


def resolve_precision(requested: str, *, cuda: bool, bf16_supported: bool) -> tuple[str, str | None]:
    """The precision to train in, and a message when the request cannot be honoured.

    `bf16_supported`: the GPU has bf16 (Ampere or newer), or, without CUDA, the CPU multiplies
    bf16 natively (`cpu_has_native_bf16`). On a GPU without bf16 (a T4) bf16 falls back to
    fp16 mixed precision. On a CPU, "bf16" keeps the frozen base weights in bf16 and the LoRA
    weights in fp32 (their matmuls in bf16 too with `cpu_autocast`, the default); measured on
    an AVX512-BF16 EPYC it trains 1.3-1.5x faster than fp32, while a CPU without native bf16
    multiplies bf16 many times slower (what made TRL's bf16 default ~20x slower on an AVX2-only
    EPYC), so there it falls back.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision={requested!r}: use one of {', '.join(PRECISIONS)}")
    if not cuda:
        if requested == "fp16":
            return "fp32", "fp16 needs a CUDA GPU; training in fp32 on this CPU."
        if requested == "bf16" and not bf16_supported:
            return "fp32", ("this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 runs many times slower "
                            "than fp32: training in fp32.")
        if requested == "auto":
            return ("bf16" if bf16_supported else "fp32"), None
        return requested, None
    if requested == "auto":
        return ("bf16" if bf16_supported else "fp16"), None
    if requested == "bf16" and not bf16_supported:
        return "fp16", "this GPU has no bf16 (a T4 is Turing, bf16 needs Ampere or newer): using fp16 mixed precision."
    return requested, None


def native_bf16(cuda: bool) -> bool:
    """Whether this machine computes bf16 in hardware: on a GPU, compute capability 8.0 or newer
    (Ampere); on a CPU, `cpu_has_native_bf16`. Not `torch.cuda.is_bf16_supported()`: by default
    it only checks that a bf16 tensor can be made, so it says True on a T4 (capability 7.5),
    where Unsloth loads the model in fp16 and its trainer then refuses bf16 with a TypeError."""
    import torch

    return torch.cuda.get_device_capability()[0] >= 8 if cuda else cpu_has_native_bf16()


def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX), read from /proc/cpuinfo
    (Linux); elsewhere False, and the CPU path stays in fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_quantization(load_in_4bit: bool, *, cuda: bool) -> None:
    """Refuse QLoRA without CUDA before bitsandbytes fails somewhere deep inside a forward pass."""
    if load_in_4bit and not cuda:
        raise RuntimeError(
            "4-bit quantization (QLoRA, --use_quantization / load_in_4bit=True) needs a CUDA GPU: "
            "bitsandbytes' 4-bit kernels do not run on this CPU. Drop the flag; on a CPU the model "
            "trains in fp32 with LoRA, which is what QLoRA approximates anyway.")


def data_hash(records: Sequence[dict]) -> str:
    """sha256 of the conversations (messages only, canonical JSON): same data, same hash."""
    return io.canonical_sha256([r["messages"] for r in records])


# --------------------------------------------------------------------------- models


def lora_share(model_id: str, lora_r: int = 16, target_modules: Sequence[str] = TARGET_MODULES) -> dict:
    """LoRA's trainable parameters against the model's total, from its config alone.

    The model is built on PyTorch's meta device (shapes, no memory, no weights), so this works
    for a 3B Hub model as well as the embedded one. Each adapted d_in x d_out projection gains
    r x (d_in + d_out) parameters.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from persona_lib.models import resolve

    config = AutoConfig.from_pretrained(resolve(model_id))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    targets = match_target_modules(target_modules, _linear_names(model))
    per_module: dict[str, int] = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in targets and isinstance(module, torch.nn.Linear):
            per_module[leaf] = per_module.get(leaf, 0) + lora_r * (module.in_features + module.out_features)
    trainable = sum(per_module.values())
    return {"model": model_id, "total": total, "trainable": trainable, "share": trainable / total,
            "per_module": per_module, "layers": config.num_hidden_layers}


def _fix_tokenizer(tokenizer):
    """A pad token for batching. Labels come from our own masks, never from input_ids, so a pad
    token equal to EOS (what many Llama tokenizers ship) cannot hide the trained end of turn."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _load_unsloth(config: TrainConfig, path: str):
    from unsloth import (
        FastLanguageModel,  # first: Unsloth patches transformers when imported
    )

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=path, max_seq_length=config.max_seq_length, dtype=None, load_in_4bit=config.load_in_4bit)
    model = FastLanguageModel.get_peft_model(
        model,
        r=config.lora_r,
        target_modules=list(config.target_modules),
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        bias="none",
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False,
        random_state=config.seed,
    )
    return model, _fix_tokenizer(tokenizer)


def cpu_attention(config: TrainConfig) -> str:
    """The attention implementation a CPU run uses (see EAGER_UP_TO)."""
    if config.cpu_attention != "auto":
        return config.cpu_attention
    return "eager" if config.max_seq_length <= EAGER_UP_TO else "sdpa"


def load_for_training(config: TrainConfig, path: str, precision: str, cuda: bool):
    """Base model in `precision` with fresh LoRA adapters (seeded), and its tokenizer: the
    transformers + PEFT backend."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # On CPU, bf16 means bf16 base weights (PEFT keeps the LoRA weights in fp32), not autocast.
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    kwargs: dict[str, Any] = {"dtype": dtype}
    if config.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype)
    if cuda:
        kwargs["device_map"] = {"": 0}
    else:
        kwargs["attn_implementation"] = cpu_attention(config)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if config.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    torch.manual_seed(config.seed)  # the LoRA A matrices are drawn now
    targets = match_target_modules(config.target_modules, _linear_names(model))
    model = get_peft_model(model, LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=targets, bias="none", task_type="CAUSAL_LM"))
    return model, _fix_tokenizer(load_tokenizer(path))


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters of a PEFT model; PEFT counts 4-bit weights at full size."""
    return model.get_nb_trainable_parameters()


# --------------------------------------------------------------------------- run


@dataclass
class TrainResult:
    output_dir: Path  # the adapter folder, with the tokenizer, loss log, curve and manifest
    manifest: dict
    model: Any = field(default=None, repr=False)  # the trained PEFT model, ready to generate
    tokenizer: Any = field(default=None, repr=False)
    reused: bool = False  # True: train(reuse=True) loaded an earlier run's adapter instead of training

    @property
    def train_loss(self) -> float | None:
        return self.manifest["metrics"]["train_loss"]

    @property
    def eval_loss(self) -> float | None:
        return self.manifest["metrics"]["eval_loss"]

    @property
    def tokens_per_second(self) -> float:
        return self.manifest["throughput"]["tokens_per_second"]


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "unsloth", "bitsandbytes"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _hardware(cuda: bool) -> dict:
    import torch

    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if cuda:
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _run_key(config: TrainConfig, train_hash: str, eval_hash: str) -> dict:
    return {"config": config.to_dict(), "train_data": train_hash, "eval_data": eval_hash}


def last_checkpoint(ckpt_dir: str | os.PathLike) -> str | None:
    """The newest complete checkpoint folder. The Trainer writes `trainer_state.json` last, so a
    folder without a readable one was cut by a kill mid-save: it is removed, and the one before
    it is used."""
    ckpt_dir = Path(ckpt_dir)
    found = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    for folder in reversed(found):
        try:
            io.read_json(folder / "trainer_state.json")
            return str(folder)
        except (OSError, ValueError):
            print(f"{folder.name} is incomplete (the run was stopped while saving it): removing it")
            shutil.rmtree(folder, ignore_errors=True)
    return None


def _prepare_checkpoints(ckpt_dir: Path, key: dict, resume: bool, say=print) -> str | None:
    """The checkpoint to resume from (None: start fresh). A checkpoint from a different config
    or data is refused rather than silently mixed into this run."""
    last = last_checkpoint(ckpt_dir)
    key_file = ckpt_dir / "run_key.json"
    if last and resume:
        old = io.read_json(key_file) if key_file.is_file() else {}
        if old != key:
            changed = sorted(k for k in set(old.get("config", {})) | set(key["config"])
                             if old.get("config", {}).get(k) != key["config"].get(k))
            changed += [k for k in ("train_data", "eval_data") if old.get(k) != key[k]]
            raise RuntimeError(
                f"cannot resume from {last}: it was made with a different {', '.join(changed) or 'run'}. "
                f"Resume with the original config and data, or start over: delete {ckpt_dir} and run again "
                "(or train with resume=False, which deletes it).")
        say(f"resuming from {last}")
        return last
    if last:
        say(f"starting fresh: removing the old checkpoints in {ckpt_dir} (resume=True / --resume continues instead)")
    if resume and not last:
        say(f"no checkpoint in {ckpt_dir}: starting from step 0")
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    io.write_json(key_file, key)
    return None


def finished_run(output_dir: str | os.PathLike, key: dict) -> dict | None:
    """The manifest of the adapter in `output_dir` when its run finished with exactly the config
    and data of `key` (`_run_key`), else None. The manifest is written last and removed when a
    run starts, so an adapter without one is unfinished; so is one missing a file that loading
    it reads (`adapters.LOADED_FILES`) among those it lists."""
    import fnmatch

    from persona_lib.adapters import LOADED_FILES

    output_dir = Path(output_dir)
    if not all((output_dir / name).is_file() for name in ("manifest.json", "adapter_config.json")):
        return None
    manifest = io.read_json(output_dir / "manifest.json")
    needed = [n for n in manifest.get("files", []) if any(fnmatch.fnmatch(n, p) for p in LOADED_FILES)]
    if not all((output_dir / name).is_file() for name in needed):
        return None
    data = manifest.get("data", {})
    found = {"config": manifest.get("config"), "train_data": data.get("train_sha256"),
             "eval_data": data.get("eval_sha256")}
    return manifest if found == key else None


def _tokens_at_checkpoint(checkpoint: str | None) -> int:
    """Tokens already counted by the run a resume continues (its saved trainer state)."""
    if checkpoint is None:
        return 0
    return io.read_json(Path(checkpoint) / "trainer_state.json").get("num_input_tokens_seen", 0)


def _save_final(model, tokenizer, dest: Path) -> list[str]:
    """Save adapter + tokenizer into a temporary folder, then move each file into `dest`: a kill
    during saving leaves the old files or the new ones, never a half-written adapter."""
    tmp = dest / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    names = sorted(p.name for p in tmp.iterdir())
    for name in names:
        os.replace(tmp / name, dest / name)
    tmp.rmdir()
    return names


def _final_losses(history: list[dict]) -> dict:
    train = [row["loss"] for row in history if "loss" in row]
    evals = [row["eval_loss"] for row in history if "eval_loss" in row]
    tail = train[-5:]
    return {
        "train_loss": tail[-1] if tail else None,
        "train_loss_last5_mean": sum(tail) / len(tail) if tail else None,
        "first_train_loss": train[0] if train else None,
        "eval_loss": evals[-1] if evals else None,
        "best_eval_loss": min(evals) if evals else None,
        "first_eval_loss": evals[0] if evals else None,
    }


def train(config: TrainConfig, records: Sequence[dict], output_dir: str | os.PathLike, *,
          eval_records: Sequence[dict] | None = None, resume: bool = False, reuse: bool = False,
          progress: bool = True, callbacks: Sequence = ()) -> TrainResult:
    """Fine-tune `config.model_id` with LoRA on `records` (ChatML conversations) into `output_dir`.

    `eval_records` is the validation set; without it, `config.validation_fraction` of `records`
    is held out. `resume=True` continues from the last checkpoint in `output_dir/checkpoints`
    (same config and data required). `reuse=True` loads the adapter already in `output_dir`
    instead when its run finished with this config and data (a notebook's Run all done twice;
    one process only: under `accelerate launch` it trains); the result then has `reused=True`
    and that run's manifest. `callbacks` are transformers
    `TrainerCallback`s added after the loss log and progress bar (a timer, a memory trace).
    Returns the manifest, and the trained model in memory.
    """
    import torch

    from persona_lib.models import resolve

    t0 = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    # Under `accelerate launch` (DDP) every process runs this function: all of them train, the
    # first one alone prints, prepares the checkpoint folder and writes the results.
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    first = int(os.environ.get("RANK", "0")) == 0
    say = print if first else (lambda *args, **kwargs: None)
    check_quantization(config.load_in_4bit, cuda=cuda)
    backend = choose_backend(config.backend, cuda=cuda,
                             unsloth_installed=importlib.util.find_spec("unsloth") is not None)
    precision, note = resolve_precision(config.precision, cuda=cuda, bf16_supported=native_bf16(cuda))
    if note:
        say(note)
    if eval_records is None:
        train_records, eval_records = split_for_validation(records, config.validation_fraction, config.seed)
    else:
        train_records, eval_records = list(records), list(eval_records)
    if not train_records:
        raise ValueError("no training records: pass at least one conversation")
    key = _run_key(config, data_hash(train_records), data_hash(eval_records))
    if reuse and processes == 1 and (manifest := finished_run(output_dir, key)):
        from persona_lib import adapters

        print(f"{output_dir} already holds the adapter of this configuration, trained on these conversations "
              f"({manifest['steps']} steps in {manifest['timings']['train_s']:.0f} s): loading it instead of "
              "training again. Change a setting or the data, or delete the folder, to train anew.")
        model, tokenizer = adapters.load(output_dir, config.model_id, load_in_4bit=config.load_in_4bit)
        return TrainResult(output_dir=output_dir, manifest=manifest, model=model, tokenizer=tokenizer, reused=True)
    if processes > 1:
        from accelerate import PartialState

        with PartialState(cpu=not cuda).main_process_first():  # the others see the folder it leaves
            checkpoint = _prepare_checkpoints(output_dir / "checkpoints", key, resume, say=say)
    else:
        checkpoint = _prepare_checkpoints(output_dir / "checkpoints", key, resume)
    if first:
        # manifest.json marks a finished run (written last); an older one must not vouch for this run.
        (output_dir / "manifest.json").unlink(missing_ok=True)
        config.to_yaml(output_dir / "train_config.yaml")

    path = resolve(config.model_id)
    if backend == "unsloth":
        model, tokenizer = _load_unsloth(config, path)
    else:
        model, tokenizer = load_for_training(config, path, precision, cuda)
    trainable, total = parameter_counts(model)
    say(f"{config.model_id}: {backend} backend, {precision}, LoRA r={config.lora_r} trains "
        f"{trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)"
        + (f", {processes} processes" if processes > 1 else ""))
    t_load = time.perf_counter()

    train_data = build_dataset(train_records, tokenizer, config.max_seq_length)
    eval_data = build_dataset(eval_records, tokenizer, config.max_seq_length) if eval_records else None
    if train_data.truncated:
        say(f"{train_data.truncated} conversation(s) longer than max_seq_length={config.max_seq_length} were cut "
              f"at the end ({train_data.dropped} lost every assistant token and were dropped)")
    t_data = time.perf_counter()

    steps_per_epoch = math.ceil(math.ceil(train_data.examples / (config.batch_size * processes))
                                / config.gradient_accumulation_steps)
    # The manifest records the config as asked for: its max_steps stays -1 when min_steps sets the
    # run's length below, so a rerun with the same config recognises the finished adapter
    # (multi.ensure_adapter compares them); `steps` in the manifest holds the count trained.
    requested = config
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.num_epochs)
    if config.max_steps < 0 and total_steps < config.min_steps:
        # The learning rate is tuned per update, and a voice needs a number of updates, not of
        # passes: 2 epochs of Captain Codebeard's 100 training conversations are 26 updates, and its
        # adapter hardly spoke pirate (bench/bench_multi.py). A step count keeps the schedule
        # (warm-up, linear decay) whole; the run ends mid-epoch.
        say(f"{train_data.examples} conversations make {total_steps} updates in {config.num_epochs:g} epochs; "
              f"training min_steps={config.min_steps} ({config.min_steps / steps_per_epoch:.1f} epochs) instead")
        total_steps = config.min_steps
        config = replace(config, max_steps=total_steps)
    args = sft_config(config, output_dir / "checkpoints", precision=precision, cuda=cuda,
                      has_eval=eval_data is not None, backend=backend, total_steps=total_steps)
    trainer = build_trainer(config, model, tokenizer, args, train_data.dataset,
                            eval_data.dataset if eval_data else None, backend=backend)
    for callback in [*training_callbacks(output_dir, total_steps, progress), *callbacks]:
        trainer.add_callback(callback)

    tokens_before = _tokens_at_checkpoint(checkpoint)
    start = time.perf_counter()
    out = trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.perf_counter() - start
    in_train = dict(getattr(trainer, "phase_seconds", {}))  # empty for a trainer not made by build_trainer
    state = trainer.state
    if eval_data is not None and not any(row.get("step") == state.global_step and "eval_loss" in row
                                         for row in state.log_history):
        trainer.evaluate()  # the curve ends with a validation point at the final step
    session_tokens = state.num_input_tokens_seen - tokens_before

    model.eval()
    files = _save_final(model, tokenizer, output_dir) if first else []
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)  # the returned model is ready to generate
    history = [row for row in state.log_history if "loss" in row or "eval_loss" in row]
    from persona_lib.plots import loss_curve

    if first:
        loss_curve(history, title=f"{config.model_id}: LoRA r={config.lora_r}", path=output_dir / "loss_curve.png")
    trainer.accelerator.wait_for_everyone()  # no process still reads a checkpoint that is deleted next
    if first and not config.keep_checkpoints:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)

    manifest = {
        "config": requested.to_dict(),
        "backend": backend,
        "precision": precision,
        "model_path": path,
        "base_model": config.model_id,
        "chat_template_sha256": hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest(),
        "versions": package_versions(),
        "hardware": {**_hardware(cuda), "processes": processes},
        "data": {
            "train_sha256": key["train_data"],
            "eval_sha256": key["eval_data"],
            "train_examples": train_data.examples,
            "eval_examples": eval_data.examples if eval_data else 0,
            "train_tokens": train_data.tokens,
            "trained_tokens": train_data.trained_tokens,
            "truncated": train_data.truncated,
            "dropped": train_data.dropped,
        },
        "parameters": {"trainable": trainable, "total": total, "share": trainable / total},
        "steps": state.global_step,
        "epochs": state.epoch,
        "resumed_from": checkpoint,
        "timings": {
            "load_model_s": round(t_load - t0, 2),
            "tokenize_s": round(t_data - t_load, 2),
            "train_s": round(train_seconds, 2),
            # of train_s: validation passes and checkpoint saves (None where the trainer does not time them)
            "evaluate_s": round(in_train["evaluate"], 2) if in_train else None,
            "checkpoint_s": round(in_train["checkpoint"], 2) if in_train else None,
            "total_s": round(time.perf_counter() - t0, 2),
        },
        "throughput": {
            "tokens": session_tokens,
            "tokens_per_second": round(session_tokens / train_seconds, 2) if train_seconds else 0.0,
            # the optimizer steps alone, what bench/bench_train_cpu.py measures
            "tokens_per_second_in_steps": (round(session_tokens / stepping, 2) if in_train and
                                           (stepping := train_seconds - sum(in_train.values())) > 0 else None),
            "train_runtime_s": out.metrics.get("train_runtime"),
        },
        "metrics": _final_losses(history),
        "files": files + ["train_config.yaml", "loss_log.jsonl", "loss_curve.png", "manifest.json"],
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "",
    }
    if first:
        io.write_json(output_dir / "manifest.json", manifest)
    m = manifest["metrics"]
    say(f"done in {train_seconds:.0f} s ({manifest['throughput']['tokens_per_second']:.0f} tokens/s): "
          f"train loss {m['first_train_loss']:.3f} -> {m['train_loss']:.3f}"
          + (f", validation loss {m['first_eval_loss']:.3f} -> {m['eval_loss']:.3f}" if m["eval_loss"] else "")
          + f"\nadapter and tokenizer: {output_dir}")
    return TrainResult(output_dir=output_dir, manifest=manifest, model=model, tokenizer=tokenizer)


def read_loss_log(output_dir: str | os.PathLike) -> list[dict]:
    return io.read_jsonl(Path(output_dir) / "loss_log.jsonl")


def preset(model_id: str, **overrides) -> TrainConfig:
    """The TrainConfig preset for a model on this machine: smoke() for the tiny model,
    colab_t4() where Unsloth runs (a CUDA GPU with unsloth), cpu() elsewhere."""
    from persona_lib.models import unsloth_available

    if model_id == TINY:
        return TrainConfig.smoke(**overrides)
    make = TrainConfig.colab_t4 if unsloth_available() else TrainConfig.cpu
    return make(**{"model_id": model_id, **overrides})


def train_persona(slug: str, output_dir: str | os.PathLike, model_id: str = EMBEDDED, *, resume: bool = True,
                  progress: bool = True, **overrides) -> TrainResult:
    """The training stage in one call: a shipped persona's conversations (`shipped_splits`:
    the classifier's reserved slice left out, 10% held out for validation) trained with the
    preset for `model_id`, into `output_dir`, resuming an interrupted run."""
    config = preset(model_id, **overrides)
    splits = shipped_splits(slug, config.validation_fraction, config.seed)
    return train(config, splits["train"], output_dir, eval_records=splits["validation"], resume=resume,
                 progress=progress)
