"""The pinned set: one place, inside unsloth's ranges, installed as pinned, and it trains on CPU."""

import re
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# unsloth 2026.10.9's declared ranges (its wheel's METADATA), which Colab must satisfy.
UNSLOTH_CAPS = {"transformers": (5, 17, 0), "trl": (1, 15, 0)}
UNSLOTH_BELOW = {"datasets": (5, 0, 0)}


def pins(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+)==([^\s#]+)", line):
            out[m.group(1).lower()] = m.group(2)
    return out


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split("+")[0].split(".")[:3])


def test_shared_pins_sit_inside_unsloths_ranges():
    shared = pins("requirements.txt")
    for name, cap in UNSLOTH_CAPS.items():
        assert version_tuple(shared[name]) <= cap, f"{name}=={shared[name]} is above unsloth's cap {cap}"
    for name, below in UNSLOTH_BELOW.items():
        assert version_tuple(shared[name]) < below
    assert shared["trl"] != "1.15.0", ("trl 1.15.0 crashes on CPU at the first step "
                                       "(its fused LM-head loss calls Triton)")
    assert "torch" not in shared, "torch must not be in the shared pins: Colab keeps its own build"


def test_each_package_is_pinned_in_one_place():
    files = ["requirements.txt", "requirements-cpu.txt", "requirements-dev.txt"]
    seen: dict[str, str] = {}
    for f in files:
        for name in pins(f):
            assert name not in seen, f"{name} is pinned in both {seen[name]} and {f}"
            seen[name] = f
    assert pins("requirements-cpu.txt")["torch"] == "2.13.0"


def test_installed_versions_are_the_pinned_ones():
    for f in ["requirements.txt", "requirements-cpu.txt", "requirements-dev.txt"]:
        for name, version in pins(f).items():
            assert metadata.version(name).split("+")[0] == version, (
                f"{name}: installed {metadata.version(name)}, {f} pins {version}")


def test_colab_install_cell_uses_the_same_release_and_unsloth_pins():
    from persona_lib import colab

    assert colab.RELEASE_TAG in colab.install_cell()
    assert all("==" in req for req in colab.UNSLOTH_NO_DEPS + colab.UNSLOTH_WITH_DEPS)
    names = [req.split("==")[0] for req in colab.UNSLOTH_NO_DEPS + colab.UNSLOTH_WITH_DEPS]
    assert "torch" not in names and "torchvision" not in names


def test_sft_trainer_trains_on_cpu(tiny_path, tmp_path):
    """A few real SFTTrainer steps with the pinned transformers/trl/peft on the CPU: the loss
    falls, LoRA weights move, base weights do not. This is what proves the pinned set."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from persona_lib.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    tokenizer = load_tokenizer("tiny")
    rows = [
        {"messages": [{"role": "user", "content": "Plan my Monday."},
                      {"role": "assistant", "content": "Let's lock it in: deep work first, email at noon."}]}
    ] * 8
    config = SFTConfig(
        output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=3e-2,
        bf16=False, use_cpu=True, report_to=[], logging_steps=1, save_strategy="no", max_length=64,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=LoraConfig(r=8, lora_alpha=8, target_modules="all-linear"))
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.3, losses
    params = dict(trainer.model.named_parameters())
    assert lora_before and all(not torch.equal(params[n], p) for n, p in lora_before.items() if "lora_B" in n)
    assert all(torch.equal(params[n], p) for n, p in base_before.items())
