"""TrainConfig, the backend and precision decisions, and a whole training run on the tiny model."""

import json
import platform

import pytest

from persona_lib.dataset import load_shipped
from persona_lib.train import (
    TARGET_MODULES,
    TrainConfig,
    check_quantization,
    choose_backend,
    cpu_has_native_bf16,
    data_hash,
    lora_share,
    native_bf16,
    read_loss_log,
    resolve_precision,
    train,
)
from persona_lib.trainer import WHOLE_LOSS

# --------------------------------------------------------------------------- config


def test_defaults_are_the_style_tuning_defaults():
    c = TrainConfig()
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (16, 16, 0.0)
    assert c.target_modules == TARGET_MODULES and len(TARGET_MODULES) == 7
    assert c.learning_rate == 1e-3 and c.max_seq_length == 512 and c.model_id == "embedded"
    assert TrainConfig.cpu() == c


def test_presets():
    t4 = TrainConfig.colab_t4()
    assert t4.load_in_4bit and t4.gradient_checkpointing and t4.optim == "adamw_8bit"
    assert t4.batch_size * t4.gradient_accumulation_steps == 8 and t4.learning_rate == 2e-4
    assert "/" in t4.model_id  # a Hub id
    smoke = TrainConfig.smoke(lora_r=8)
    assert smoke.model_id == "tiny" and smoke.max_steps > 0 and smoke.lora_r == 8


def test_every_problem_is_reported_with_its_field_and_fix():
    with pytest.raises(ValueError) as e:
        TrainConfig(lora_r=0, learning_rate=0.5, precision="fp8", target_modules=(), validation_fraction=0.7)
    text = str(e.value)
    for name in ("lora_r=0", "learning_rate=0.5", "precision='fp8'", "target_modules=()", "validation_fraction=0.7"):
        assert name in text
    assert "use one of auto, fp32, bf16, fp16" in text


def test_yaml_round_trip_and_partial_files(tmp_path):
    c = TrainConfig.colab_t4(lora_r=32, lora_alpha=32)
    path = tmp_path / "train.yaml"
    c.to_yaml(path)
    assert TrainConfig.from_yaml(path) == c
    (tmp_path / "partial.yaml").write_text("lora_r: 8\nlearning_rate: 1.0e-4\n")
    partial = TrainConfig.from_yaml(tmp_path / "partial.yaml", num_epochs=3)
    assert (partial.lora_r, partial.learning_rate, partial.num_epochs, partial.max_seq_length) == (8, 1e-4, 3, 512)


def test_yaml_errors_name_the_file_and_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora_rank: 8\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: unknown TrainConfig field\(s\) lora_rank"):
        TrainConfig.from_yaml(bad)
    bad.write_text("lora_r: -1\n")
    with pytest.raises(ValueError, match=r"(?s)bad\.yaml: .*lora_r=-1: use a positive rank"):
        TrainConfig.from_yaml(bad)


# --------------------------------------------------------------------------- decisions

PRECISION_CASES = [
    # requested, cuda, bf16 supported (GPU, or CPU natively) -> precision, says why
    ("auto", False, False, "fp32", False),  # an AVX2-only CPU: bf16 matmuls 17x slower
    ("auto", False, True, "bf16", False),  # an AVX512-BF16 / AMX CPU: bf16 base weights
    ("bf16", False, False, "fp32", True),
    ("bf16", False, True, "bf16", False),
    ("fp16", False, True, "fp32", True),
    ("fp32", False, True, "fp32", False),
    ("auto", True, False, "fp16", False),  # a T4
    ("bf16", True, False, "fp16", True),  # a T4 asked for bf16
    ("auto", True, True, "bf16", False),  # an A100 / H100
    ("bf16", True, True, "bf16", False),
    ("fp16", True, True, "fp16", False),
]


@pytest.mark.parametrize("requested, cuda, bf16, expected, message", PRECISION_CASES)
def test_precision_decision(requested, cuda, bf16, expected, message):
    precision, note = resolve_precision(requested, cuda=cuda, bf16_supported=bf16)
    assert precision == expected
    assert (note is not None) == message


@pytest.mark.parametrize("capability, expected", [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_gpu_bf16_is_decided_by_compute_capability(monkeypatch, capability, expected):
    """A T4 (7.5) answers True to torch.cuda.is_bf16_supported(), which only checks that a bf16
    tensor can be made; Unsloth loads it in fp16 and refuses bf16. Fake the device, not the flag."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert native_bf16(cuda=True) is expected
    precision, _ = resolve_precision("auto", cuda=True, bf16_supported=native_bf16(cuda=True))
    assert precision == ("bf16" if expected else "fp16")


def test_t4_bf16_fallback_says_why():
    _, note = resolve_precision("bf16", cuda=True, bf16_supported=False)
    assert "fp16" in note and "T4" in note


def test_backend_decision():
    assert choose_backend("auto", cuda=True, unsloth_installed=True) == "unsloth"
    assert choose_backend("auto", cuda=True, unsloth_installed=False) == "transformers"
    assert choose_backend("auto", cuda=False, unsloth_installed=True) == "transformers"
    assert choose_backend("transformers", cuda=True, unsloth_installed=True) == "transformers"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        choose_backend("unsloth", cuda=False, unsloth_installed=True)
    with pytest.raises(RuntimeError, match="unsloth is not installed"):
        choose_backend("unsloth", cuda=True, unsloth_installed=False)


def test_quantization_without_cuda_is_a_clear_error():
    check_quantization(False, cuda=False)
    check_quantization(True, cuda=True)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        check_quantization(True, cuda=False)


def test_target_modules_follow_fused_projections():
    from persona_lib.train import match_target_modules

    llama = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert match_target_modules(TARGET_MODULES, llama) == list(TARGET_MODULES)
    phi3 = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}  # Phi-3 / Phi-4-mini fuse q,k,v and gate,up
    assert match_target_modules(TARGET_MODULES, phi3) == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    with pytest.raises(ValueError, match="c_attn"):
        match_target_modules(TARGET_MODULES, {"c_attn", "c_proj", "c_fc"})


def test_lora_share_counts_each_projection(tiny_path):
    share = lora_share("tiny", lora_r=16)
    # tiny: 2 layers, hidden 64, intermediate 128, 4 heads, 2 KV heads of 16 -> k/v project to 32
    per_layer = 16 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
    assert share["trainable"] == 2 * per_layer
    assert share["per_module"]["k_proj"] == 2 * 16 * (64 + 32)
    assert 0 < share["share"] < 0.02


# --------------------------------------------------------------------------- a whole run


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, tiny_path):
    records = load_shipped("taskmaster")[:20]
    out = tmp_path_factory.mktemp("train") / "adapter"
    result = train(TrainConfig.smoke(), records, out, progress=False)
    return records, out, result


def test_run_leaves_a_peft_adapter_the_tokenizer_and_its_records(smoke_run):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from persona_lib.models import load_model

    records, out, result = smoke_run
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "train_config.yaml", "loss_log.jsonl", "loss_curve.png", "manifest.json"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoints").exists() and not (out / ".final.tmp").exists()
    assert TrainConfig.from_yaml(out / "train_config.yaml") == TrainConfig.smoke()
    base, tokenizer = load_model("tiny")
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.chat_template == tokenizer.chat_template and saved.eos_token == "<|im_end|>"
    tuned = PeftModel.from_pretrained(base, str(out))
    b = [p for n, p in tuned.named_parameters() if "lora_B" in n]
    assert b and any(p.abs().max() > 0 for p in b), "the adapter's B matrices are still zero: nothing trained"


def test_manifest_records_config_versions_data_timings_and_metrics(smoke_run):
    records, out, result = smoke_run
    m = json.loads((out / "manifest.json").read_text())
    assert m == result.manifest
    assert m["config"] == TrainConfig.smoke().to_dict()
    cpu_choice = resolve_precision("auto", cuda=False, bf16_supported=cpu_has_native_bf16())[0]
    assert m["backend"] == "transformers" and m["precision"] == cpu_choice
    assert {"torch", "transformers", "trl", "peft"} <= m["versions"].keys()
    n_train, n_eval = m["data"]["train_examples"], m["data"]["eval_examples"]
    assert n_train + n_eval == len(records) and n_eval >= 1
    assert len(m["data"]["train_sha256"]) == 64 and m["data"]["train_sha256"] != data_hash(records)
    assert 0 < m["data"]["trained_tokens"] < m["data"]["train_tokens"]
    assert m["steps"] == 6 and m["timings"]["train_s"] > 0 and m["throughput"]["tokens_per_second"] > 0
    # smoke: validation and a checkpoint every 3 steps, both timed inside train_s
    t = m["timings"]
    assert 0 < t["evaluate_s"] and 0 < t["checkpoint_s"] and t["evaluate_s"] + t["checkpoint_s"] < t["train_s"]
    assert m["throughput"]["tokens_per_second_in_steps"] > m["throughput"]["tokens_per_second"]
    assert m["metrics"]["train_loss"] > 0 and m["metrics"]["eval_loss"] > 0
    assert m["parameters"]["trainable"] == lora_share("tiny")["trainable"]


def test_loss_log_has_every_step_and_the_validation_points(smoke_run):
    _, out, _ = smoke_run
    log = read_loss_log(out)
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in log if "eval_loss" in r] == [3, 6]


@pytest.mark.slow
def test_the_embedded_model_learns_a_reply_and_to_stop(tmp_path):
    """Overfit one conversation on the real 135M model: greedy decoding then gives the reply and
    ends at <|im_end|>, which only happens if the end-of-turn token was a training target. (The
    tiny random model cannot show this: its frozen norm and 0.02-scale tied embeddings cap
    every logit near 1.3, so no adapter gets its loss below ~9.8.)"""
    import torch

    record = {"id": "x", "persona": "taskmaster", "topic": "t",
              "messages": [{"role": "user", "content": "Status of the launch checklist?"},
                           {"role": "assistant", "content": "Two of five done. Next: the QA sign-off."}]}
    config = TrainConfig(max_steps=8, learning_rate=2e-3, batch_size=1, gradient_accumulation_steps=1,
                         eval_steps=0, save_steps=100, validation_fraction=0.0, warmup_ratio=0.0)
    result = train(config, [record], tmp_path / "overfit", progress=False)
    assert result.train_loss < 0.1 * result.manifest["metrics"]["first_train_loss"]
    tokenizer = result.tokenizer
    prompt = tokenizer.apply_chat_template(record["messages"][:1], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        out = result.model.generate(**ids, max_new_tokens=30, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                    pad_token_id=tokenizer.pad_token_id)
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]) == "Two of five done. Next: the QA sign-off.<|im_end|>"


@pytest.mark.parametrize("chunk_rows", [0, 7, WHOLE_LOSS])
def test_target_logits_loss_and_gradients_equal_the_full_vocabulary_loss(tiny_path, tmp_path, chunk_rows):
    """The CPU path's loss projects only labelled positions onto the vocabulary, in chunks of
    positions; it must be the same number, with the same gradients, as HF's loss over every
    position: in the default chunks (128 positions of the 49k vocabulary: two chunks here),
    7 positions at a time, or all at once."""
    import torch
    from peft import LoraConfig, get_peft_model

    from persona_lib.masking import build_dataset
    from persona_lib.models import load_model
    from persona_lib.trainer import LOSS_CHUNK_BYTES, build_trainer, sft_config

    model, tokenizer = load_model("tiny")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=list(TARGET_MODULES),
                                             init_lora_weights=False, task_type="CAUSAL_LM"))  # nonzero B: real grads
    config = TrainConfig.smoke()
    data = build_dataset(load_shipped("taskmaster")[:4], tokenizer, 128)
    args = sft_config(config, tmp_path, precision="fp32", cuda=False, has_eval=False, backend="transformers")
    trainer = build_trainer(config, model, tokenizer, args, data.dataset)
    assert trainer.target_logits
    trainer.loss_chunk_rows = chunk_rows
    batch = trainer.data_collator([data.dataset[i] for i in range(4)])
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert labelled > LOSS_CHUNK_BYTES // (4 * model.get_output_embeddings().weight.shape[0])  # two chunks
    lora = [p for n, p in model.named_parameters() if "lora_" in n]

    def loss_and_grads(compute):
        model.zero_grad()
        loss = compute()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in lora]

    ours, ours_grads = loss_and_grads(lambda: trainer.compute_loss(model, dict(batch)))
    full, full_grads = loss_and_grads(lambda: model(**batch).loss)
    assert torch.allclose(ours, full, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_grads, full_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)
    n = sum(int((torch.tensor(data.dataset[i]["labels"][1:]) != -100).sum()) for i in range(4))
    halves = trainer.compute_loss(model, dict(batch), num_items_in_batch=2 * n)  # half of a 2-step accumulation
    assert torch.allclose(halves, full / 2, rtol=1e-5)


def test_train_persona_trains_the_shipped_split_without_the_classifiers_slice(tiny_path, tmp_path):
    from persona_lib.dataset import is_reserved, shipped_splits
    from persona_lib.train import train_persona

    splits = shipped_splits("taskmaster")
    assert splits["train"] and splits["validation"]
    assert not any(is_reserved(r["id"]) for part in splits.values() for r in part)
    assert not {r["id"] for r in splits["train"]} & {r["id"] for r in splits["validation"]}
    result = train_persona("taskmaster", tmp_path / "adapter", "tiny", max_steps=2, eval_steps=0, progress=False)
    assert result.manifest["data"]["train_sha256"] == data_hash(splits["train"])
    assert result.manifest["config"]["model_id"] == "tiny" and result.manifest["steps"] == 2


def test_validation_points_are_spaced_over_the_run_not_every_n_updates(tiny_path, tmp_path):
    """eval_steps=-1 (the default) validates at most six times at any run length, the last at the
    final step; a positive value keeps its fixed interval, 0 validates at the end only."""
    from persona_lib.trainer import eval_interval

    assert TrainConfig().eval_steps == -1
    assert [eval_interval(-1, n) for n in (1, 6, 22, 60, 240)] == [1, 1, 4, 10, 40]
    assert (eval_interval(11, 240), eval_interval(0, 240)) == (11, None)
    with pytest.raises(ValueError, match="total_steps"):
        eval_interval(-1, 0)
    with pytest.raises(ValueError, match="eval_steps"):
        TrainConfig(eval_steps=-2)
    records = load_shipped("taskmaster")
    for eval_steps, expected in ((-1, [2, 4, 6, 8, 10, 12]), (5, [5, 10, 12]), (0, [12])):
        config = TrainConfig.smoke(max_steps=12, eval_steps=eval_steps, save_steps=100, max_seq_length=64)
        result = train(config, records[:8], tmp_path / str(eval_steps), eval_records=records[8:10], progress=False)
        assert [row["step"] for row in read_loss_log(tmp_path / str(eval_steps)) if "eval_loss" in row] == expected
        assert result.manifest["steps"] == 12


def test_min_steps_trains_a_small_dataset_for_that_many_updates(tiny_path, tmp_path, capsys):
    """4 conversations at batch 2 make 2 updates an epoch: with min_steps=5 the run takes 5
    updates (2.5 epochs); a dataset that already makes enough updates is left to its epochs."""
    records = load_shipped("taskmaster")[:4]
    config = TrainConfig.smoke(max_steps=-1, num_epochs=1.0, min_steps=5, batch_size=2, gradient_accumulation_steps=1,
                               eval_steps=0)
    result = train(config, records, tmp_path / "small", eval_records=[], progress=False)
    assert result.manifest["steps"] == 5 and result.manifest["epochs"] == pytest.approx(2.5)
    assert "min_steps=5 (2.5 epochs)" in capsys.readouterr().out
    enough = train(TrainConfig.smoke(max_steps=-1, num_epochs=1.0, min_steps=2, batch_size=2,
                                     gradient_accumulation_steps=1, eval_steps=0),
                   records, tmp_path / "enough", eval_records=[], progress=False)
    assert enough.manifest["steps"] == 2
    with pytest.raises(ValueError, match="min_steps"):
        TrainConfig(min_steps=-1)


def test_lora_matmuls_run_in_bf16_on_bf16_base_weights_and_learn_the_same(tiny_path, tmp_path):
    """With bf16 base weights on a CPU, `cpu_autocast` runs the LoRA matmuls in bf16 (autocast,
    PEFT's input cast off) while the LoRA weights stay fp32; the loss and gradients are those of
    the fp32-LoRA path within bf16 rounding. Off, PEFT feeds the fp32 LoRA weights fp32 inputs."""
    import torch
    from peft import LoraConfig, get_peft_model

    from persona_lib.masking import build_dataset
    from persona_lib.models import load_model
    from persona_lib.trainer import build_trainer, sft_config

    model, tokenizer = load_model("tiny", dtype="bfloat16")
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=list(TARGET_MODULES),
                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.dtype == torch.float32 for p in lora)
    data = build_dataset(load_shipped("taskmaster")[:4], tokenizer, 128)
    seen = []
    probe = next(m for n, m in model.named_modules() if n.endswith("q_proj.lora_A.default"))
    probe.register_forward_hook(lambda module, args, output: seen.append((args[0].dtype, output.dtype)))

    def loss_and_grads(autocast: bool):
        config = TrainConfig.smoke(cpu_autocast=autocast)
        args = sft_config(config, tmp_path / str(autocast), precision="bf16", cuda=False, has_eval=False,
                          backend="transformers")
        trainer = build_trainer(config, model, tokenizer, args, data.dataset)
        assert trainer.lora_in_bf16 == autocast
        batch = trainer.data_collator([data.dataset[i] for i in range(4)])
        model.zero_grad()
        seen.clear()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in lora]), seen[0]

    fast, fast_grads, fast_dtypes = loss_and_grads(True)
    slow, slow_grads, slow_dtypes = loss_and_grads(False)
    assert fast_dtypes == (torch.bfloat16, torch.bfloat16) and slow_dtypes == (torch.float32, torch.float32)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in lora)
    assert torch.allclose(fast, slow, rtol=1e-2)
    assert torch.nn.functional.cosine_similarity(fast_grads, slow_grads, dim=0) > 0.99


GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Run in a fresh process: whether a block comes from the heap depends on the free chunks that
# earlier tests left there.
HEAP_PROBE = """
from pathlib import Path
import torch
from persona_lib.trainer import kept_memory

def heap():
    line = next(l for l in Path("/proc/self/maps").read_text().splitlines() if l.endswith("[heap]"))
    return [int(x, 16) for x in line.split()[0].split("-")]

def in_heap(block):
    start, end = heap()
    return start <= block.data_ptr() < end

MB48 = 48 * 2**20  # one long batch's attention matrices on the embedded model
block = torch.ones(MB48, dtype=torch.uint8)
assert not in_heap(block), "outside: a mapping of its own, unmapped when freed"
del block
with kept_memory():
    block = torch.ones(MB48, dtype=torch.uint8)
    assert in_heap(block), "inside: from the heap"
    kept = heap()[1]
    del block
    assert heap()[1] == kept, "inside: freed, and the heap keeps it"
assert heap()[1] < kept, "leaving trims the heap"
block = torch.ones(MB48, dtype=torch.uint8)
assert not in_heap(block), "after: large blocks are mapped on their own again"
print("ok")
"""


def test_memory_traces_draw_resident_memory_and_heap_per_setting(tmp_path):
    from persona_lib.plots import memory_traces

    traces = {"default": [{"step": 1, "resident_gb": 5.0, "heap_gb": 4.5},
                          {"step": 2, "resident_gb": 5.5, "heap_gb": 4.6}],
              "kept": [{"step": 1, "resident_gb": 6.0, "heap_gb": 5.5},
                       {"step": 2, "resident_gb": 7.0, "heap_gb": 6.5}]}
    fig = memory_traces(traces, path=tmp_path / "memory.png")
    lines = fig.axes[0].lines
    assert [line.get_label() for line in lines] == ["default: resident", "default: heap",
                                                    "kept: resident", "kept: heap"]
    assert list(lines[2].get_ydata()) == [6.0, 7.0] and lines[3].get_color() == lines[2].get_color()
    assert (tmp_path / "memory.png").stat().st_size > 0


@pytest.mark.skipif(not GLIBC, reason="kept_memory tunes glibc's malloc; elsewhere it does nothing")
def test_kept_memory_keeps_large_blocks_in_the_heap_and_gives_them_back_on_leaving():
    """Outside the block glibc maps a 48 MB block on its own and unmaps it when freed, so the
    next step's block is faulted in page by page again; inside, it comes from the heap and stays
    there when freed; leaving trims the heap, and large blocks get their own mappings again."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


@pytest.mark.parametrize("keep", [True, False])
def test_cpu_training_keeps_freed_memory_only_while_it_trains(tiny_path, tmp_path, monkeypatch, keep):
    """`cpu_keep_memory` reaches the trainer: train()'s training loop runs inside kept_memory
    (seen from a callback at each step) only when it is on, and leaves it when training ends."""
    import contextlib

    from transformers import TrainerCallback

    import persona_lib.trainer as trainer_module

    inside, seen = [], []
    real = trainer_module.kept_memory

    @contextlib.contextmanager
    def recorded():
        with real():
            inside.append(True)
            try:
                yield
            finally:
                inside.pop()

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(bool(inside))

    monkeypatch.setattr(trainer_module, "kept_memory", recorded)
    train(TrainConfig.smoke(max_steps=2, eval_steps=0, cpu_keep_memory=keep), load_shipped("taskmaster")[:8],
          tmp_path, eval_records=[], progress=False, callbacks=[Probe()])
    assert seen == [keep, keep] and not inside


def test_cpu_attention_is_eager_for_short_sequences_and_sdpa_for_long_ones(tiny_path):
    from persona_lib.train import EAGER_UP_TO, load_for_training

    short = TrainConfig.smoke(max_seq_length=EAGER_UP_TO)
    model, _ = load_for_training(short, tiny_path, "fp32", cuda=False)
    assert model.get_base_model().config._attn_implementation == "eager"
    long = TrainConfig.smoke(max_seq_length=EAGER_UP_TO + 1)
    model, _ = load_for_training(long, tiny_path, "fp32", cuda=False)
    assert model.get_base_model().config._attn_implementation == "sdpa"
    chosen = TrainConfig.smoke(max_seq_length=EAGER_UP_TO + 1, cpu_attention="eager")
    model, _ = load_for_training(chosen, tiny_path, "fp32", cuda=False)
    assert model.get_base_model().config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="cpu_attention"):
        TrainConfig(cpu_attention="flash")
