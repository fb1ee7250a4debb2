"""The numbers the two skill files state are the code's defaults.

Each SKILL.md ends with a "Values this project uses" section holding one YAML block. A key
named after code (`persona_lib.train.TrainConfig.colab_t4()`, `persona_lib.dataset`,
`persona_lib.dataset.split_records`) is compared field by field with that object: a config
instance's attribute, a module constant, or a function's default argument. The other keys are
checked by what the code does: the arguments it passes to Unsloth, bitsandbytes and
`save_pretrained_gguf` (captured with stand-ins, no GPU needed), the precision it picks, the
LoRA parameter shares it computes, the thresholds `decide_targets` applies, and the data bar
tests/test_shipped_data.py enforces. A default changed in code fails here until the skill
follows it; an entry no check knows fails too, so the block cannot state untested numbers.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SKILLS = ("persona-tuner", "llmops-fine-tuner")

# What each skill must state at least (the values the chapter's lessons start from).
REQUIRED = {
    "persona-tuner": {
        "persona_lib.dedup": ["DEDUP_THRESHOLD", "SHINGLE_WORDS", "NUM_PERM", "BANDS"],
        "shipped_data_bar": ["min_distinct_2", "max_signature_share", "min_multi_turn_share"],
        "persona_lib.train.TrainConfig.cpu()": ["lora_r", "lora_alpha", "learning_rate", "num_epochs"],
        "persona_lib.train.TrainConfig.colab_t4()": ["lora_r", "learning_rate", "optim", "load_in_4bit"],
        "persona_lib.evaluate.EvalConfig()": ["judge_prompts", "n_bootstrap"],
        "persona_lib.judge.JudgeConfig()": ["model", "temperature"],
        "persona_lib.evaluate.decide_targets": ["knowledge_lower_bound_at_least_pp", "diversity_within_fraction"],
    },
    "llmops-fine-tuner": {
        "persona_lib.train.TrainConfig.cpu()": [
            "lora_r", "lora_alpha", "lora_dropout", "target_modules", "learning_rate", "warmup_ratio", "optim",
            "batch_size", "gradient_accumulation_steps", "num_epochs", "max_seq_length"],
        "persona_lib.train.TrainConfig.colab_t4()": [
            "optim", "batch_size", "gradient_accumulation_steps", "load_in_4bit", "gradient_checkpointing"],
        "unsloth_calls": ["from_pretrained", "get_peft_model"],
        "qlora_bitsandbytes": ["bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype"],
        "persona_lib.export.ExportConfig()": ["quants"],
        "unsloth_gguf_call": ["quantization_method"],
        "lora_share_r16": ["llama_3_2_3b"],
    },
}


# --------------------------------------------------------------------------- reading the block


def values_block(skill: str) -> dict:
    path = ROOT / ".claude" / "skills" / skill / "SKILL.md"
    text = path.read_text()
    section = re.search(r"^## Values this project uses\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert section, f"{path}: no '## Values this project uses' section"
    block = re.search(r"```yaml\n(.*?)```", section.group(1), re.DOTALL)
    assert block, f"{path}: the 'Values this project uses' section has no ```yaml block"
    data = yaml.safe_load(block.group(1))
    assert isinstance(data, dict) and data, f"{path}: the values block must be a non-empty mapping"
    return data


def entries() -> list[tuple[str, str]]:
    return [(skill, key) for skill in SKILLS for key in values_block(skill)]


# --------------------------------------------------------------------------- comparing


def plain(value):
    """Tuples as lists, recursively, so YAML lists compare with tuple defaults."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def same(stated, actual) -> bool:
    stated, actual = plain(stated), plain(actual)
    if isinstance(stated, bool) or isinstance(actual, bool):
        return type(stated) is type(actual) and stated == actual
    if isinstance(stated, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(float(stated), float(actual), rel_tol=1e-12, abs_tol=0.0)
    if isinstance(stated, str) and isinstance(actual, (int, float)):
        return False  # e.g. "2e-4" parsed by YAML 1.1 as a string: write 2.0e-4
    if isinstance(stated, list) and isinstance(actual, list):
        return len(stated) == len(actual) and all(same(s, a) for s, a in zip(stated, actual))
    if isinstance(stated, dict) and isinstance(actual, dict):
        return stated.keys() == actual.keys() and all(same(stated[k], actual[k]) for k in stated)
    return stated == actual


def assert_same(where: str, stated: dict, actual: dict) -> None:
    assert isinstance(stated, dict), f"{where}: expected a mapping of values"
    wrong = {k: {"skill says": stated[k], "code has": actual.get(k, "<missing>")}
             for k in stated if k not in actual or not same(stated[k], actual[k])}
    assert not wrong, f"{where}: the skill and the code disagree (update the skill text and its values block):\n" \
                      + json.dumps(wrong, indent=1, default=str)


def resolve(dotted: str):
    """`persona_lib.a.B.c()` -> the object (called when the key ends with "()")."""
    call = dotted.endswith("()")
    parts = dotted.removesuffix("()").split(".")
    obj, i = importlib.import_module(parts[0]), 1
    while i < len(parts):
        try:
            obj = importlib.import_module(".".join(parts[: i + 1]))
        except ModuleNotFoundError:
            assert hasattr(obj, parts[i]), f"{dotted}: {parts[i]} does not exist"
            obj = getattr(obj, parts[i])
        i += 1
    return obj() if call else obj


def code_values(obj, fields) -> dict:
    if inspect.isfunction(obj):
        params = inspect.signature(obj).parameters
        return {f: params[f].default for f in fields
                if f in params and params[f].default is not inspect.Parameter.empty}
    return {f: getattr(obj, f) for f in fields if hasattr(obj, f)}


# --------------------------------------------------------------------------- behaviour checks


class Stop(Exception):
    """Raised by a stand-in once the call under test has shown its arguments."""


def check_unsloth_calls(stated: dict, monkeypatch) -> None:
    from persona_lib import train

    seen = {}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            seen["from_pretrained"] = kwargs
            return object(), types.SimpleNamespace(pad_token="<pad>", eos_token="<eos>")

        @staticmethod
        def get_peft_model(model, **kwargs):
            seen["get_peft_model"] = kwargs
            return model

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FastLanguageModel))
    train._load_unsloth(train.TrainConfig.colab_t4(), "/models/base")
    assert seen["from_pretrained"].pop("model_name") == "/models/base"
    assert_same("unsloth_calls", stated, seen)


def check_qlora_bitsandbytes(stated: dict, monkeypatch) -> None:
    import transformers

    from persona_lib import train

    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    config = train.TrainConfig.colab_t4()
    precision, _ = train.resolve_precision(config.precision, cuda=True, bf16_supported=False)  # a T4
    with pytest.raises(Stop):
        train.load_for_training(config, "/models/base", precision, cuda=True)
    q = seen["quantization_config"]
    actual = {"load_in_4bit": q.load_in_4bit, "bnb_4bit_quant_type": q.bnb_4bit_quant_type,
              "bnb_4bit_use_double_quant": q.bnb_4bit_use_double_quant,
              "bnb_4bit_compute_dtype": str(q.bnb_4bit_compute_dtype).removeprefix("torch.")}
    assert_same("qlora_bitsandbytes", stated, actual)


def check_precision(stated: dict, monkeypatch) -> None:
    from persona_lib.train import resolve_precision

    actual = {
        "t4_auto": resolve_precision("auto", cuda=True, bf16_supported=False)[0],
        "t4_bf16_requested": resolve_precision("bf16", cuda=True, bf16_supported=False)[0],
        "ampere_auto": resolve_precision("auto", cuda=True, bf16_supported=True)[0],
        "cpu_auto": resolve_precision("auto", cuda=False, bf16_supported=False)[0],
    }
    assert_same("precision", stated, actual)


# Llama-3.2-3B-Instruct's shape (its config.json, no weights): the T4 preset's model.
LLAMA_32_3B = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=3072,
                   intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                   head_dim=128, tie_word_embeddings=True, max_position_embeddings=131072)


def check_lora_share(stated: dict, monkeypatch, tmp_path) -> None:
    from persona_lib.train import lora_share

    folders = {"llama_3_2_3b": tmp_path / "llama-3.2-3b"}
    folders["llama_3_2_3b"].mkdir()
    (folders["llama_3_2_3b"] / "config.json").write_text(json.dumps(LLAMA_32_3B))
    actual = {}
    for name in stated:
        assert name in ("embedded", "llama_3_2_3b"), f"lora_share_r16: no check knows the model {name!r}"
        share = lora_share("embedded" if name == "embedded" else str(folders[name]), lora_r=16)
        actual[name] = {"trainable": share["trainable"], "total": share["total"],
                        "percent": round(100 * share["share"], 2)}
    assert_same("lora_share_r16", stated, actual)


def check_unsloth_gguf_call(stated: dict, monkeypatch, tmp_path) -> None:
    from persona_lib import export

    seen = {}

    class Model:
        def save_pretrained_gguf(self, directory, tokenizer, **kwargs):
            seen.update(kwargs)
            return {"gguf_files": []}

    export.export_unsloth(Model(), object(), tmp_path)
    assert_same("unsloth_gguf_call", stated, seen)


def check_decide_targets(stated: dict, monkeypatch) -> None:
    """Met exactly at the stated bound, not met just past it."""
    from persona_lib.evaluate import decide_targets

    known = {"persona_consistency_lower_bound_at_least", "knowledge_lower_bound_at_least_pp",
             "diversity_within_fraction"}
    assert set(stated) <= known, f"decide_targets: no check knows {sorted(set(stated) - known)}"

    def targets(persona_low=0.5, knowledge_low=0.0, ratio=1.0):
        interval = lambda low: {"diff": low, "low": low, "high": low, "n": 10}  # noqa: E731
        return decide_targets(
            tuned={"diversity": {"distinct_2": ratio}},
            reference_diversity={"distinct_2": {"mean": 1.0}},
            paired={"tuned_vs_base_prompted": interval(persona_low)},
            judge_report={"used": False, "why": "no judge in this test"},
            base_recall={"recall_percent": 50.0}, tuned_recall={"recall_percent": 50.0},
            recall_diff=interval(knowledge_low))

    eps = 1e-6
    if "persona_consistency_lower_bound_at_least" in stated:
        bound = stated["persona_consistency_lower_bound_at_least"]
        assert targets(persona_low=bound)["persona_consistency"]["met"], "persona target not met at the stated bound"
        assert not targets(persona_low=bound - eps)["persona_consistency"]["met"], \
            "persona target met below the stated bound: the code's bound moved"
    if "knowledge_lower_bound_at_least_pp" in stated:
        bound = stated["knowledge_lower_bound_at_least_pp"]
        assert targets(knowledge_low=bound)["knowledge"]["met"], "knowledge target not met at the stated bound"
        assert not targets(knowledge_low=bound - eps)["knowledge"]["met"], \
            "knowledge target met below the stated bound: the code's bound moved"
    if "diversity_within_fraction" in stated:
        tol = stated["diversity_within_fraction"]
        for sign in (-1, 1):
            assert targets(ratio=1 + sign * (tol - eps))["diversity"]["met"], "diversity not met inside the stated band"
            assert not targets(ratio=1 + sign * (tol + eps))["diversity"]["met"], \
                "diversity met outside the stated band: the code's tolerance moved"


# The bar tests/test_shipped_data.py enforces, read from its source: each pattern must match once.
SHIPPED_BAR = {
    "min_distinct_2": r"distinct_n\(replies\(records\), 2\) >= ([0-9.]+)",
    "max_signature_share": r"if share > ([0-9.]+)\}",
    "min_multi_turn_share": r"stats\[\"multi_turn_share\"\] >= ([0-9.]+)",
    "min_heldout_prompts": r"len\(heldout\) >= (\d+)",
    "min_dialogue_user_turns": r"len\(d\[\"user_turns\"\]\) < (\d+)",
}


def check_shipped_data_bar(stated: dict, monkeypatch) -> None:
    source = (ROOT / "tests" / "test_shipped_data.py").read_text()
    actual = {}
    for name, pattern in SHIPPED_BAR.items():
        found = re.findall(pattern, source)
        assert len(found) == 1, f"tests/test_shipped_data.py: the check for {name} changed shape; update this test"
        actual[name] = float(found[0])
    topics = re.findall(r"if n >= (\d+)\]\n\s*assert len\(well_covered\) >= (\d+)", source)
    assert len(topics) == 1, "tests/test_shipped_data.py: the topic-coverage check changed shape; update this test"
    actual[f"min_topics_with_{topics[0][0]}_conversations"] = int(topics[0][1])
    minimum = re.search(r"^MIN_CONVERSATIONS = (\{.*?\})$", source, re.MULTILINE)
    assert minimum, "tests/test_shipped_data.py: MIN_CONVERSATIONS not found"
    actual["min_conversations"] = ast.literal_eval(minimum.group(1))
    assert_same("shipped_data_bar (tests/test_shipped_data.py)", stated, actual)


SPECIAL = {
    "unsloth_calls": check_unsloth_calls,
    "qlora_bitsandbytes": check_qlora_bitsandbytes,
    "precision": check_precision,
    "lora_share_r16": check_lora_share,
    "unsloth_gguf_call": check_unsloth_gguf_call,
    "persona_lib.evaluate.decide_targets": check_decide_targets,
    "shipped_data_bar": check_shipped_data_bar,
}


def check_entry(key: str, stated, monkeypatch, tmp_path) -> None:
    if key in SPECIAL:
        check = SPECIAL[key]
        kwargs = {"tmp_path": tmp_path} if "tmp_path" in inspect.signature(check).parameters else {}
        check(stated, monkeypatch, **kwargs)
        return
    assert key.startswith("persona_lib."), \
        f"{key!r}: not a persona_lib object and no check in tests/test_skill_values.py knows it"
    assert isinstance(stated, dict) and stated, f"{key}: expected a mapping of field: value"
    assert_same(key, stated, code_values(resolve(key), stated))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("skill", SKILLS)
def test_values_block_states_the_required_values(skill):
    block = values_block(skill)
    missing = {key: [f for f in fields if f not in (block.get(key) or {})] for key, fields in REQUIRED[skill].items()}
    missing = {k: v for k, v in missing.items() if v}
    assert not missing, f"{skill}: the values block must state {missing}"


@pytest.mark.parametrize(("skill", "key"), [
    pytest.param(skill, key, id=f"{skill}:{key}",
                 # lora_share on "embedded" builds the embedded model on first use (about a minute)
                 marks=[pytest.mark.slow] if key == "lora_share_r16" and "embedded" in values_block(skill)[key] else [])
    for skill, key in entries()])
def test_stated_values_equal_the_code(skill, key, monkeypatch, tmp_path):
    check_entry(key, values_block(skill)[key], monkeypatch, tmp_path)


@pytest.mark.parametrize(("key", "field", "wrong"), [
    ("persona_lib.train.TrainConfig.cpu()", "lora_r", 8),
    ("persona_lib.train.TrainConfig.cpu()", "learning_rate", 1e-4),
    ("persona_lib.train.TrainConfig.colab_t4()", "optim", "adamw_torch"),
    ("unsloth_calls", "get_peft_model", {"r": 16}),
    ("qlora_bitsandbytes", "bnb_4bit_quant_type", "fp4"),
    ("persona_lib.export.ExportConfig()", "quants", ["Q8_0", "Q4_K_M"]),
    ("unsloth_gguf_call", "quantization_method", ["q8_0"]),
])
def test_a_value_that_differs_from_the_code_fails(key, field, wrong, monkeypatch, tmp_path):
    stated = dict(values_block("llmops-fine-tuner")[key])
    stated[field] = wrong
    with pytest.raises(AssertionError, match="disagree"):
        check_entry(key, stated, monkeypatch, tmp_path)


@pytest.mark.parametrize(("field", "wrong"), [
    ("knowledge_lower_bound_at_least_pp", -3.0),
    ("diversity_within_fraction", 0.2),
    ("persona_consistency_lower_bound_at_least", 0.1),
])
def test_a_wrong_target_threshold_fails(field, wrong, monkeypatch):
    with pytest.raises(AssertionError):
        check_decide_targets({field: wrong}, monkeypatch)


def test_a_changed_code_default_fails(monkeypatch, tmp_path):
    from persona_lib import dedup

    monkeypatch.setattr(dedup, "DEDUP_THRESHOLD", 0.8)
    with pytest.raises(AssertionError, match="DEDUP_THRESHOLD"):
        check_entry("persona_lib.dedup", values_block("persona-tuner")["persona_lib.dedup"], monkeypatch, tmp_path)


def test_unknown_entries_are_refused(monkeypatch, tmp_path):
    with pytest.raises(AssertionError, match="no check"):
        check_entry("speed_of_light", {"c": 3e8}, monkeypatch, tmp_path)
