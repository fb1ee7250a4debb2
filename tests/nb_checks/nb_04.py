"""What notebook 04 writes in smoke mode: the adapter folder lessons 5-7 load, and the before/after."""

import json
from pathlib import Path


def check(run: Path) -> None:
    from peft import PeftConfig
    from transformers import AutoTokenizer

    from persona_lib.models import load_tokenizer
    from persona_lib.train import TrainConfig

    adapter = run / "adapter"
    config = PeftConfig.from_pretrained(str(adapter))
    assert (config.r == 16 and config.lora_alpha == 16
            and set(config.target_modules) == set(TrainConfig().target_modules))
    assert (adapter / "adapter_model.safetensors").stat().st_size > 10_000
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert tokenizer.chat_template == load_tokenizer("tiny").chat_template and tokenizer.eos_token == "<|im_end|>"

    manifest = json.loads((adapter / "manifest.json").read_text())
    smoke = TrainConfig.smoke()
    assert manifest["base_model"] == "tiny" and manifest["config"] == smoke.to_dict()
    assert manifest["steps"] == smoke.max_steps and manifest["backend"] == "transformers"
    assert manifest["data"]["train_examples"] == 16 and manifest["data"]["eval_examples"] == 4
    assert manifest["metrics"]["train_loss"] > 0 and manifest["metrics"]["eval_loss"] > 0
    assert 0 < manifest["parameters"]["share"] < 0.05 and manifest["throughput"]["tokens_per_second"] > 0

    log = [json.loads(line) for line in (adapter / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, smoke.max_steps + 1))
    assert [r["step"] for r in log if "eval_loss" in r] == [3, 6]
    assert (adapter / "loss_curve.png").stat().st_size > 10_000

    rows = [json.loads(line) for line in (adapter / "before_after.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["prompt"].strip() and isinstance(r["after"], str) for r in rows)
    style = json.loads((adapter / "style_check.json").read_text())
    assert style["prompts"] == 2
    for name in ("before", "after"):
        assert 0 <= style[name]["signature_rate"] <= 1 and 0 <= style[name]["distinct_2"] <= 1


def check_skill(run: Path) -> None:
    """The lesson's section of the learner's skill (beside the run folders) is filled."""
    from persona_lib import skillfirst

    assert skillfirst.progress(run.parent)["L04"], "the Update your skill cell did not fill L04"
