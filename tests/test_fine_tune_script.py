"""scripts/fine_tune_persona.py: its documented interface, layered settings, and a run on the tiny model."""

import importlib.util
import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from persona_lib.dataset import load_shipped
from persona_lib.io import write_jsonl
from persona_lib.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "fine_tune_persona.py"


def script_module():
    spec = importlib.util.spec_from_file_location("fine_tune_persona", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_help_explains_every_argument():
    parser = script_module().build_parser()
    text = parser.format_help()
    for flag in ("--model_id", "--dataset_path", "--persona_name", "--output_dir", "--max_seq_length",
                 "--use_quantization", "--use_bf16", "--config", "--resume"):
        assert flag in text
    for f in fields(TrainConfig):
        if f.name not in ("model_id", "max_seq_length", "load_in_4bit"):
            assert f"--{f.name}" in text, f.name
    for action in parser._actions:
        assert action.help and len(action.help) > 10, f"{action.option_strings} has no explanation"


def test_settings_layer_preset_then_yaml_then_flags(tmp_path):
    module = script_module()
    yaml_file = tmp_path / "run.yaml"
    TrainConfig(lora_r=8, lora_alpha=8, learning_rate=1e-4, num_epochs=3).to_yaml(yaml_file)
    args = module.build_parser().parse_args([
        "--dataset_path", "x.jsonl", "--persona_name", "taskmaster", "--config", str(yaml_file),
        "--learning_rate", "3e-4", "--use_bf16", "--use_quantization", "--max_seq_length", "256",
        "--target_modules", "q_proj", "v_proj", "--no-group_by_length"])
    cpu = module.config_from_args(args, cuda=False)
    assert (cpu.lora_r, cpu.lora_alpha, cpu.num_epochs) == (8, 8, 3)  # from the YAML file
    assert cpu.learning_rate == 3e-4 and cpu.max_seq_length == 256  # flags win
    assert cpu.precision == "bf16" and cpu.load_in_4bit and not cpu.group_by_length
    assert cpu.target_modules == ("q_proj", "v_proj")
    plain = module.build_parser().parse_args(["--dataset_path", "x.jsonl", "--persona_name", "zen_coder"])
    gpu = module.config_from_args(plain, cuda=True)
    assert gpu.model_id == "microsoft/Phi-4-mini-instruct" and not gpu.load_in_4bit  # quantization is opt-in
    assert gpu.gradient_checkpointing and gpu.optim == "adamw_8bit"
    assert module.config_from_args(plain, cuda=False) == TrainConfig.cpu()


def test_quantization_without_cuda_is_a_clear_message(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_script("--dataset_path", "persona_data/taskmaster.jsonl", "--persona_name", "taskmaster",
                        "--use_quantization", "--model_id", "tiny", cwd=ROOT)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_a_missing_dataset_file_is_named(tmp_path):
    result = run_script("--dataset_path", str(tmp_path / "nope.jsonl"), "--persona_name", "taskmaster",
                        "--model_id", "tiny", cwd=tmp_path)
    assert result.returncode != 0 and "nope.jsonl: no such file" in result.stderr
    assert "persona_data/taskmaster.jsonl holds the shipped taskmaster conversations" in result.stderr


def test_trains_one_persona_of_a_mixed_file_end_to_end(tmp_path, tiny_path):
    mixed = load_shipped("taskmaster")[:10] + load_shipped("captain_codebeard")[:6]
    write_jsonl(tmp_path / "mixed.jsonl", mixed)
    result = run_script("--model_id", "tiny", "--dataset_path", "mixed.jsonl", "--persona_name", "taskmaster",
                        "--output_dir", "out", "--max_steps", "2", "--max_seq_length", "128", "--eval_steps", "0",
                        "--batch_size", "2", "--gradient_accumulation_steps", "1", "--no_progress", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    out = tmp_path / "out" / "taskmaster_final_adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "manifest.json", "loss_log.jsonl", "loss_curve.png"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["train_examples"] + manifest["data"]["eval_examples"] == 10  # captain_codebeard left out
    assert manifest["config"]["model_id"] == "tiny" and manifest["config"]["max_seq_length"] == 128
    assert manifest["steps"] == 2 and "fine_tune_persona.py" in manifest["command"]


def test_two_processes_under_accelerate_launch_train_the_same_adapter_layout(tmp_path, tiny_path):
    """`accelerate launch --num_processes 2` on a CPU: torch.distributed with the gloo backend,
    DistributedDataParallel averaging the LoRA gradients; the first process writes the folder."""
    from safetensors import safe_open

    from persona_lib.adapters import load

    write_jsonl(tmp_path / "tm.jsonl", load_shipped("taskmaster")[:24])
    common = ["--model_id", "tiny", "--dataset_path", "tm.jsonl", "--persona_name", "taskmaster", "--max_steps", "3",
              "--max_seq_length", "128", "--eval_steps", "0", "--batch_size", "2", "--gradient_accumulation_steps",
              "1", "--no_progress"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT)]
    two = subprocess.run([*launch, *common, "--output_dir", "two"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert two.stdout.count("adapter + tokenizer:") == 1  # one process reports
    one = run_script(*common, "--output_dir", "one", cwd=tmp_path)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-3000:]

    folders = {n: tmp_path / n / "taskmaster_final_adapter" for n in ("one", "two")}
    manifests = {n: json.loads((f / "manifest.json").read_text()) for n, f in folders.items()}
    assert manifests["two"]["hardware"]["processes"] == 2 and manifests["one"]["hardware"]["processes"] == 1
    assert manifests["two"]["steps"] == 3
    # Each update of the two-process run saw twice the conversations of the one-process run.
    assert manifests["two"]["throughput"]["tokens"] > 1.5 * manifests["one"]["throughput"]["tokens"]
    configs = {n: json.loads((f / "adapter_config.json").read_text()) for n, f in folders.items()}
    for config in configs.values():
        config["target_modules"] = sorted(config["target_modules"])  # PEFT writes a set, in any order
    assert configs["one"] == configs["two"]
    tensors = {}
    for n, f in folders.items():
        with safe_open(str(f / "adapter_model.safetensors"), "pt") as weights:
            tensors[n] = {k: weights.get_tensor(k) for k in weights.keys()}
    assert {k: v.shape for k, v in tensors["one"].items()} == {k: v.shape for k, v in tensors["two"].items()}
    assert any(v.abs().max() > 0 for k, v in tensors["two"].items() if "lora_B" in k)  # it trained
    model, _ = load(folders["two"])
    assert sum(1 for n, _ in model.named_parameters() if "lora_" in n) == len(tensors["two"])
