"""CPU training speed: today's configuration against the one before it and TRL's defaults, side by side.

Trains the embedded SmolLM2-135M with LoRA (r=16, all projections) on the shipped TaskMaster
training split, the same pre-tokenized data (assistant-only labels) and the same number of
optimizer steps (8 conversations each) for every configuration, in one process:

- ``project``: persona_lib.train's CPU configuration (TrainConfig.cpu() through SFTTrainer: fp32,
  or on a CPU with native bf16 bf16 base weights with the LoRA matmuls in bf16 too, fp32 LoRA
  weights; eager attention);
- ``baseline``: the configuration before those changes (``cpu_autocast=False``: fp32 LoRA
  matmuls on bf16 base weights; SDPA attention; glibc's default malloc), on exactly the same
  batches, so their loss curves are compared step by step;
- ``project_sdpa``: the project's configuration with SDPA attention (what eager attention adds);
  ``project_eager`` names eager explicitly (the same as ``project`` today; it was the comparison
  while an fp32 run took SDPA, train_cpu_no_avx512.json);
- ``project_kept_memory``: the project's configuration with the memory a step frees kept for the
  next step (``cpu_keep_memory=True``, trainer.kept_memory; off by default for its memory cost).
  Configurations share one process, so after it glibc's thresholds are where kept_memory leaves
  them, the values its dynamic thresholds settle at during training anyway; each row records
  its page faults per step. (Until commit 6fa321e this was the project's default, and
  ``project_malloc`` the trial without it: train_cpu_memory*.json use those names);
- ``project_whole_loss``: the project's configuration with the LM head and loss over all of a
  batch's labelled positions at once, as before they were chunked (trainer.LOSS_CHUNK_BYTES);
- ``project_batch8``: the project's configuration at batch 8 without accumulation (a shape check);
- ``project_fp32``: the project's configuration in fp32, what a CPU without native bf16 runs;
- ``trl_default``: TRL's SFTConfig defaults (bf16 autocast, gradient checkpointing, batch 8
  in random order), only `use_cpu=True` added because SFTConfig refuses bf16 on a CPU without it;
- ``trl_default_fp32``: the same with bf16 off;
- ``plain_loop``: a hand-written fp32 PyTorch loop over the project's batches, HF's own loss.

For each it reports non-pad tokens per second and the share of the ceiling of the precision its
matmuls run in: 4 x parameters x tokens/s (forward pass and the backward pass through
activations, 2 + 2 FLOPs per parameter and token; the frozen weights get no gradients) over
this machine's fp32 or bf16 matmul rate (2048 x 2048, both measured before and after every
configuration, each taken at its best). The first optimizer step of each run is a warm-up and is
not timed; each other step is timed from its start to its end. Every configuration runs --rounds
times, interleaved: on a shared machine other work only slows a run down, so each
configuration's best round is its speed (and the shares are conservative). `ratio_limit_bf16`
is the bf16 ceiling over the baseline: no configuration on this CPU can beat the baseline by more.

The profile (on by default) times two optimizer steps of the baseline and the project by
operator with torch.profiler: base matmuls, LoRA matmuls, attention, the LM head and the loss,
dtype copies, the optimizer, other elementwise work, and the Python and framework remainder.
--processes runs scripts/fine_tune_persona.py under `accelerate launch --num_processes 2` beside
a one-process run and reports both throughputs.

    python bench/bench_train_cpu.py                    # -> bench/results/train_cpu.json
    python bench/bench_train_cpu.py --steps 2 --rounds 1 --configs baseline,project --no-profile
    python bench/bench_train_cpu.py --persona captain_codebeard --configs project,baseline,project_sdpa \
        --steps 5 --rounds 3 --no-processes --results bench/results/train_cpu_codebeard.json   # long conversations
    python bench/bench_train_cpu.py --configs project,baseline,project_eager --steps 4 --rounds 3 --no-processes \
        --results bench/results/train_cpu_no_avx512.json   # on a CPU without native bf16 (fp32)
    python bench/bench_train_cpu.py --configs project,project_compiled --steps 6 \
        --no-profile --no-processes --results bench/results/train_cpu_trials.json   # what was tried and dropped
    python bench/bench_train_cpu.py --configs project,project_train,project_validating --steps 6 --rounds 2 \
        --no-profile --no-processes --results bench/results/train_cpu_in_train.json   # a lesson's step, validations
    python bench/bench_train_cpu.py --configs project_kept_memory,project,baseline --steps 8 --rounds 3 \
        --no-profile --no-processes --results bench/results/train_cpu_memory.json   # kept freed memory
    python bench/bench_train_cpu.py --persona captain_codebeard \
        --configs project,project_whole_loss,project_kept_memory --steps 6 --rounds 3 \
        --no-profile --no-processes --results bench/results/train_cpu_loss_chunks.json
    python bench/bench_train_cpu.py --full-run   # 2 epochs, baseline and project, before/after -> train_cpu_full.json

`--full-run` trains the embedded default for 2 epochs over the shipped training split at
sequence length 512 (the lesson's fixed budget) in each of --full-configs and reports the wall
time, the validation loss curve and, on held-out prompts without a system prompt, the
signature-vocabulary rate, distinct-2 and knowledge recall before and after, with bootstrap
intervals on the differences between the configurations.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from persona_lib.io import write_json
from persona_lib.llama_build import cpu_model

RESULTS = Path(__file__).parent / "results"
# The project's own configurations: TrainConfig.cpu() with these changes.
# `baseline` is the configuration this benchmark's issue measured: fp32 LoRA matmuls, SDPA.
PROJECT = {"project": {}, "baseline": {"cpu_autocast": False, "cpu_attention": "sdpa", "cpu_keep_memory": False},
           "project_sdpa": {"cpu_attention": "sdpa"}, "project_eager": {"cpu_attention": "eager"},
           "project_kept_memory": {"cpu_keep_memory": True},
           "project_batch8": {"batch_size": 8, "gradient_accumulation_steps": 1}, "project_fp32": {"precision": "fp32"}}
# Tried on the project's configuration, kept out of it (and out of the default run) unless they help:
# torch.compile of every decoder layer (regional compilation: one layer's code compiled once, with
# dynamic sequence lengths). The eager attention implementation was a trial too, and is now the
# project's (TrainConfig.cpu_attention); `project_sdpa` keeps the measurement of what it adds.
# `project_validating` validates after every step (the persona's validation split) and times only
# the steps: does a validation pass slow the training steps after it? `project_train` is
# persona_lib.train.train itself, as the lessons call it (its validation cadence, checkpoints,
# loss log and manifest), on the same batches: is a lesson's training step the benchmark's step?
# `project_whole_loss` computes the LM head and loss over all labelled positions at once, as the
# project did before it chunked them (trainer.LOSS_CHUNK_BYTES).
TRIALS = {"project_compiled": "compile", "project_validating": "validate", "project_train": "train",
          "project_whole_loss": "whole_loss"}
# TRL's defaults and the plain loop get transformers' own attention choice, SDPA.
HF_DEFAULTS = {"cpu_attention": "sdpa"}
CONFIGS = (*PROJECT, "trl_default", "trl_default_fp32", "plain_loop")
DEFAULT_CONFIGS = CONFIGS
PROFILED = ("baseline", "project")


def matmul_gflops(seconds: float = 3.0, n: int = 2048, dtype: str = "float32") -> float:
    """Sustained matmul rate of this machine right now (GFLOP/s), n x n by n x n."""
    import torch

    a, b = torch.randn(n, n).to(getattr(torch, dtype)), torch.randn(n, n).to(getattr(torch, dtype))
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def matmul_rates() -> dict[str, float]:
    """fp32 and bf16 matmul rates. A CPU without native bf16 emulates bf16 matmuls hundreds of times
    slower than fp32 (0.4 against 178 GFLOP/s on an AMD EPYC without AVX-512), where one 2048 x 2048
    product takes 40 s: there the bf16 rate is taken on 512 x 512 matrices."""
    from persona_lib.train import cpu_has_native_bf16

    n = 2048 if cpu_has_native_bf16() else 512
    return {"fp32": matmul_gflops(2.0), "bf16": matmul_gflops(2.0, n=n, dtype="bfloat16")}


def rates_before_after(before: dict[str, float], after: dict[str, float]) -> dict[str, list[float]]:
    """{"fp32": [before, after], "bf16": [...]} in GFLOP/s, as the JSON files record them."""
    return {kind: [round(before[kind], 1), round(after[kind], 1)] for kind in before}


def cpu_flags() -> dict[str, bool]:
    """The instruction sets that decide CPU training speed."""
    from persona_lib.llama_build import cpu_flags as flags

    have = flags()
    return {name: name in have for name in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


def fresh_model(config, dtype: str = "float32"):
    """The project's own loader (persona_lib.train.load_for_training) in `dtype`, on the CPU."""
    from persona_lib.models import resolve
    from persona_lib.train import load_for_training

    precision = {"float32": "fp32", "bfloat16": "bf16"}[dtype]
    return load_for_training(config, resolve(config.model_id), precision, cuda=False)


def project_precision(config) -> str:
    from persona_lib.train import cpu_has_native_bf16, resolve_precision

    return resolve_precision(config.precision, cuda=False, bf16_supported=cpu_has_native_bf16())[0]


def step_timer():
    """A callback that records (time, non-pad tokens seen) at every optimizer step's end, and the
    time each step began (after its batches are loaded, which takes milliseconds here), and the
    process's minor page faults at each step's end."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.marks, self.begins, self.faults = [], [], []

        def on_train_begin(self, args, state, control, **kwargs):
            self.marks, self.begins = [(time.perf_counter(), state.num_input_tokens_seen)], []
            self.faults = [minor_faults()]

        def on_step_begin(self, args, state, control, **kwargs):
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))
            self.faults.append(minor_faults())

        def page_faults_per_step(self) -> int:
            """Over the timed steps, as `throughput` counts them."""
            first = first_timed(len(self.faults))
            return round((self.faults[-1] - self.faults[first]) / max(len(self.faults) - 1 - first, 1))

    return Timer()


def minor_faults() -> int:
    """Minor page faults of this process so far: memory the kernel mapped and zeroed for it."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def first_timed(marks: int) -> int:
    """Of `marks` step-end readings (the first taken at the start), the one timing starts from:
    the first step is warm-up and left out when there are two or more steps."""
    return 1 if marks > 2 else 0


def throughput(marks: list[tuple[float, int]], begins: list[float] | None = None) -> dict:
    """Tokens/s over the timed steps: all but the first (warm-up) when there are two or more.
    With `begins` each step counts from its own start to its end, so what runs between steps
    (a validation pass, a checkpoint) is left out; without, from one step's end to the next."""
    first = first_timed(len(marks))
    (t0, n0), (t1, n1) = marks[first], marks[-1]
    seconds = t1 - t0 if begins is None else sum(marks[i][0] - begins[i - 1] for i in range(first + 1, len(marks)))
    return {"timed_steps": len(marks) - 1 - first, "tokens": n1 - n0, "seconds": round(seconds, 2),
            "tokens_per_second": round((n1 - n0) / seconds, 2),
            "first_step_seconds": round(marks[1][0] - marks[0][0], 2) if len(marks) > 1 else None}


def category(name: str, shapes: list, rank: int, vocab: int) -> str:
    """Where an operator's time goes: matmuls by their shapes (the LoRA rank, the vocabulary)."""
    dims = {d for shape in shapes if shape for d in shape}
    if name == "aten::bmm":  # only attention multiplies batches of matrices (eager: QK^T and PV)
        return "attention"
    if name in ("aten::mm", "aten::addmm", "aten::matmul", "aten::linear"):
        return "lm_head_matmul" if vocab in dims else "lora_matmul" if rank in dims else "base_matmul"
    if vocab in dims and ("softmax" in name or "nll" in name or "cross_entropy" in name or name == "aten::fill_"):
        return "loss"
    if "scaled_dot_product" in name or "softmax" in name:
        return "attention"
    if name in ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone"):
        return "dtype_copies"
    if name.startswith("aten::_foreach") or name.startswith("Optimizer."):
        return "optimizer"
    if name.startswith("autograd::") or name.endswith("Backward0") or name.startswith("torch::autograd"):
        return "python_and_framework"
    return "elementwise_norm_other"


class Profiler:
    """A callback that profiles the optimizer steps after the first (warm-up) by operator."""

    def __init__(self, steps: int):
        from transformers import TrainerCallback

        self.steps, self.prof, self.wall = steps, None, 0.0
        outer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                from torch.profiler import ProfilerActivity, profile

                if state.global_step == 1:
                    outer.prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
                    outer.prof.start()
                    outer.start = time.perf_counter()
                elif state.global_step == 1 + outer.steps:
                    outer.prof.stop()
                    outer.wall = time.perf_counter() - outer.start

        self.callback = Callback()

    def breakdown(self, rank: int, vocab: int) -> dict:
        totals: dict[str, float] = {}
        events = sorted(self.prof.key_averages(group_by_input_shape=True), key=lambda e: -e.self_cpu_time_total)
        for event in events:
            key = category(event.key, event.input_shapes, rank, vocab)
            totals[key] = totals.get(key, 0.0) + event.self_cpu_time_total / 1e3
        top = [{"op": e.key, "shapes": str(e.input_shapes)[:120], "calls": e.count,
                "ms": round(e.self_cpu_time_total / 1e3), "category": category(e.key, e.input_shapes, rank, vocab)}
               for e in events[:25]]
        # What the operators do not account for: Python, the Trainer, autograd's engine, the profiler.
        totals["python_and_framework"] = max(0.0, 1e3 * self.wall - sum(totals.values()))
        wall = 1e3 * self.wall
        return {"profiled_steps": self.steps, "wall_ms": round(wall),
                "ms": {k: round(v) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
                "share": {k: round(v / wall, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
                "top_operators": top}


def runs_in(name: str, precision: str) -> str:
    """The precision a configuration's matmuls run in, for its ceiling."""
    if name in PROJECT or name in TRIALS:
        return precision
    return "bf16" if name == "trl_default" else "fp32"


def run_trainer(name: str, data, steps: int, workdir: Path, model_id: str, profile_steps: int = 0,
                eval_data=None) -> dict:
    from trl import SFTConfig, SFTTrainer

    from persona_lib.train import TrainConfig
    from persona_lib.trainer import WHOLE_LOSS, build_trainer, sft_config

    ours = name in PROJECT or name in TRIALS
    settings = PROJECT[name] if name in PROJECT else {} if name in TRIALS else HF_DEFAULTS
    config = TrainConfig.cpu(model_id=model_id, max_steps=steps, **settings)
    precision = project_precision(config)
    dtype = {"bf16": "bfloat16", "fp32": "float32"}[precision] if ours else "float32"
    model, tokenizer = fresh_model(config, dtype)
    if TRIALS.get(name) == "compile":
        for layer in model.get_base_model().model.layers:
            layer.compile(dynamic=True)
    validating = TRIALS.get(name) == "validate"
    common = dict(max_steps=steps, save_strategy="no", eval_strategy="steps" if validating else "no",
                  report_to="none", disable_tqdm=True, include_num_input_tokens_seen="non_padding", logging_steps=1)
    if validating:
        common["eval_steps"] = 1
    if ours:
        args = sft_config(config, workdir / name, precision=precision, cuda=False, has_eval=False,
                          backend="transformers", **common)
        trainer = build_trainer(config, model, tokenizer, args, data, eval_data if validating else None)
        if TRIALS.get(name) == "whole_loss":
            trainer.loss_chunk_rows = WHOLE_LOSS
    else:
        extra = {"bf16": False} if name == "trl_default_fp32" else {}
        args = SFTConfig(output_dir=str(workdir / name), use_cpu=True, **common, **extra)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    timer = step_timer()
    trainer.add_callback(timer)
    profiler = Profiler(profile_steps) if profile_steps else None
    if profiler:
        trainer.add_callback(profiler.callback)
    trainer.train()
    knobs = {k: getattr(args, k) for k in ("bf16", "gradient_checkpointing", "per_device_train_batch_size",
                                           "gradient_accumulation_steps", "loss_type", "train_sampling_strategy")}
    if ours:
        knobs.update(train_sampling_strategy="length-grouped (seeded, epoch-aware)", loss_type=config.loss,
                     base_weights=precision, lora_matmuls="bf16" if trainer.lora_in_bf16 else "fp32",
                     freed_memory="kept" if trainer.keep_memory else "returned to the kernel",
                     loss_chunk_rows=trainer.loss_chunk_rows or "LOSS_CHUNK_BYTES")
    row = {**throughput(timer.marks, timer.begins), "examples_per_step": args.per_device_train_batch_size
           * args.gradient_accumulation_steps, "page_faults_per_step": timer.page_faults_per_step(),
           "runs_in": runs_in(name, precision), "settings": knobs,
           "losses": [round(r["loss"], 5) for r in trainer.state.log_history if "loss" in r]}
    if profiler:
        row["profile"] = profiler.breakdown(config.lora_r, model.get_output_embeddings().weight.shape[0])
    return row


def run_train_function(splits: dict, steps: int, workdir: Path, model_id: str) -> dict:
    """persona_lib.train.train on the persona's training split with its validation split, with the
    step timer among its callbacks."""
    import persona_lib.train as train_module

    config = train_module.TrainConfig.cpu(model_id=model_id, max_steps=steps)
    timer = step_timer()
    out = Path(tempfile.mkdtemp(prefix="project_train_", dir=workdir))
    result = train_module.train(config, splits["train"], out, eval_records=splits["validation"], progress=False,
                                callbacks=[timer])
    timings = result.manifest["timings"]
    return {**throughput(timer.marks, timer.begins), "examples_per_step": config.batch_size
            * config.gradient_accumulation_steps, "page_faults_per_step": timer.page_faults_per_step(),
            "runs_in": runs_in("project_train", project_precision(config)),
            "settings": {"train()": "as the lessons call it", "eval_steps": config.eval_steps,
                         "save_steps": config.save_steps},
            "evaluate_s": timings["evaluate_s"], "checkpoint_s": timings["checkpoint_s"],
            "losses": [round(r["loss"], 5) for r in train_module.read_loss_log(out) if "loss" in r]}


def run_plain_loop(data, steps: int, model_id: str) -> dict:
    """The reference loop: the project's grouped batches, AdamW, HF's own loss, nothing else."""
    import torch

    from persona_lib.train import TrainConfig

    config = TrainConfig.cpu(model_id=model_id, max_steps=steps, **HF_DEFAULTS)
    model, tokenizer = fresh_model(config)
    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = [len(ids) for ids in data["input_ids"]]
    group = config.batch_size * config.gradient_accumulation_steps
    order = get_length_grouped_indices(lengths, group, generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    pad = tokenizer.pad_token_id
    model.train()
    marks = [(time.perf_counter(), 0)]
    seen, pos = 0, 0
    for _ in range(steps):
        for _ in range(config.gradient_accumulation_steps):
            rows = [data[i] for i in order[pos:pos + config.batch_size]]
            pos = (pos + config.batch_size) % len(order)
            width = max(len(r["input_ids"]) for r in rows)
            ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows])
            labels = torch.tensor([r["labels"] + [-100] * (width - len(r["labels"])) for r in rows])
            mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss / config.gradient_accumulation_steps
            loss.backward()
            seen += int(mask.sum())
        optimizer.step()
        optimizer.zero_grad()
        marks.append((time.perf_counter(), seen))
    return {**throughput(marks), "examples_per_step": group, "runs_in": "fp32",
            "settings": {"bf16": False, "gradient_checkpointing": False,
                         "per_device_train_batch_size": config.batch_size,
                         "gradient_accumulation_steps": config.gradient_accumulation_steps, "loss_type": "hf default",
                         "train_sampling_strategy": "length-grouped"}}


def tokenized(records: list[dict], model_id: str):
    """`records` as train() tokenizes them (assistant-only labels, cut at max_seq_length)."""
    from persona_lib.masking import build_dataset
    from persona_lib.models import load_tokenizer
    from persona_lib.train import TrainConfig

    return build_dataset(records, load_tokenizer(model_id), TrainConfig().max_seq_length)


def training_data(model_id: str, persona: str = "taskmaster"):
    from persona_lib.dataset import shipped_splits

    splits = shipped_splits(persona)
    return splits, tokenized(splits["train"], model_id)


def two_processes(steps: int) -> dict:
    """scripts/fine_tune_persona.py on the embedded model, one process and then two under
    `accelerate launch` (torch.distributed, gloo on a CPU): the throughput of each."""
    import subprocess

    script = Path(__file__).resolve().parent.parent / "scripts" / "fine_tune_persona.py"
    common = ["--model_id", "embedded", "--dataset_path", "persona_data/taskmaster.jsonl", "--persona_name",
              "taskmaster", "--max_steps", str(steps), "--eval_steps", "0", "--save_steps", "1000", "--no_progress"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, prefix in (("one_process", [sys.executable]), ("two_processes", launch)):
            print(f"\n== {name}: fine_tune_persona.py, {steps} steps", flush=True)
            folder = Path(tmp) / name
            subprocess.run([*prefix, str(script), *common, "--output_dir", str(folder)], check=True,
                           cwd=script.parent.parent)
            from persona_lib.io import read_json

            manifest = read_json(folder / "taskmaster_final_adapter" / "manifest.json")
            out[name] = {"processes": manifest["hardware"]["processes"], "steps": manifest["steps"],
                         "tokens": manifest["throughput"]["tokens"], "train_seconds": manifest["timings"]["train_s"],
                         "tokens_per_second": manifest["throughput"]["tokens_per_second"]}
    out["ratio"] = round(out["two_processes"]["tokens_per_second"] / out["one_process"]["tokens_per_second"], 2)
    out["note"] = ("each update of the two-process run covers twice the conversations (batch 4 per process); the "
                   "throughputs include every step, the first one too, and torch.distributed gives each process "
                   "one thread")
    return out


def speed(args) -> dict:
    from persona_lib.train import TrainConfig, cpu_has_native_bf16, package_versions

    configs = [c.strip() for c in args.configs.split(",")]
    unknown = [c for c in configs if c not in CONFIGS + tuple(TRIALS)]
    if unknown:
        sys.exit(f"unknown configuration(s) {unknown}; choose from {', '.join(CONFIGS + tuple(TRIALS))}")
    splits, data = training_data(args.model, args.persona)
    from persona_lib.models import load_model

    validating = any(TRIALS.get(name) == "validate" for name in configs)
    validation = tokenized(splits["validation"], args.model).dataset if validating else None

    params = sum(p.numel() for p in load_model(args.model)[0].parameters())
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, args.rounds + 1):
            for name in configs:
                print(f"\n== round {round_}, {name}: {args.steps} optimizer steps", flush=True)
                before = matmul_rates()
                if name == "plain_loop":
                    row = run_plain_loop(data.dataset, args.steps, args.model)
                elif TRIALS.get(name) == "train":
                    row = run_train_function(splits, args.steps, Path(tmp), args.model)
                else:
                    row = run_trainer(name, data.dataset, args.steps, Path(tmp), args.model, eval_data=validation)
                after = matmul_rates()
                for kind in rates:
                    rates[kind] += [before[kind], after[kind]]
                row.update(round=round_, matmul_gflops=rates_before_after(before, after),
                           load_average_after=[round(x, 2) for x in os.getloadavg()])
                runs[name].append(row)
                print(f"{name}: {row['tokens_per_second']:.1f} tokens/s", flush=True)
        # The profiler slows what it watches: its runs come after the timed rounds, apart.
        profiles = {}
        for name in (PROFILED if args.profile else ()):
            print(f"\n== profile, {name}: 3 optimizer steps (the last two profiled)", flush=True)
            profiles[name] = run_trainer(name, data.dataset, 3, Path(tmp), args.model, profile_steps=2)["profile"]
    # Other work on a shared machine only ever slows a run down, so each configuration's best
    # round is its speed, and the best matmul rate of the whole run is the ceiling (conservative).
    peak = {kind: max(values) for kind, values in rates.items()}
    ceiling = {kind: rate * 1e9 / (4 * params) for kind, rate in peak.items()}
    results = {}
    for name, rows in runs.items():
        best = max(rows, key=lambda r: r["tokens_per_second"])
        share = best["tokens_per_second"] / ceiling[best["runs_in"]]
        results[name] = {"tokens_per_second": best["tokens_per_second"], "runs_in": best["runs_in"],
                         "share_of_ceiling": round(share, 3), "settings": best["settings"],
                         "examples_per_step": best["examples_per_step"],
                         **({"profile": profiles[name]} if name in profiles else {}),
                         "rounds": [{k: v for k, v in r.items()
                                     if k not in ("settings", "examples_per_step", "runs_in")} for r in rows]}
        print(f"{name}: best {best['tokens_per_second']:.1f} tokens/s = {100 * share:.0f}% of the {best['runs_in']} "
              f"ceiling ({ceiling[best['runs_in']]:.0f} tokens/s at {peak[best['runs_in']]:.0f} GFLOP/s)")
    ratios = {}
    for ref in ("project", "baseline"):
        if ref in results:
            ratios.update({f"{ref}_over_{k}": round(results[ref]["tokens_per_second"] / v["tokens_per_second"], 2)
                           for k, v in results.items() if k != ref and not (ref == "baseline" and k == "project")})
    report = {
        "what": f"LoRA r=16 (all projections) on the embedded SmolLM2-135M, {args.persona}'s training split, "
                "non-pad tokens per second; share = 4 x params x tokens/s / the matmul rate of the precision "
                "the configuration's matmuls run in",
        "model": args.model, "persona": args.persona, "parameters": params, "steps": args.steps, "rounds": args.rounds,
        "matmul_gflops_peak": {k: round(v, 1) for k, v in peak.items()},
        "ceiling_tokens_per_second": {k: round(v, 1) for k, v in ceiling.items()},
        "train_examples": data.examples, "train_tokens": data.tokens,
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "cpu_native_bf16": cpu_has_native_bf16(), "project_precision": project_precision(TrainConfig.cpu()),
        "versions": package_versions(), "configs": results, "ratios": ratios,
        "goal": "project >= 3x baseline on a CPU with native bf16; no slower than it without",
    }
    if "baseline" in results:
        report["ratio_limit_bf16"] = round(ceiling["bf16"] / results["baseline"]["tokens_per_second"], 2)
    if {"baseline", "project"} <= set(results):
        pairs = [(a, b) for ra, rb in zip(runs["baseline"], runs["project"])
                 for a, b in zip(ra["losses"], rb["losses"])]
        report["same_batches"] = {
            "what": "per-step training loss of baseline and project on the same batches (every round)",
            "max_abs_difference": round(max(abs(a - b) for a, b in pairs), 5),
            "max_relative_difference": round(max(abs(a - b) / abs(a) for a, b in pairs), 5),
            "baseline": runs["baseline"][0]["losses"], "project": runs["project"][0]["losses"]}
        report["goal_met"] = ratios["project_over_baseline"] >= 3.0 if cpu_has_native_bf16() \
            else ratios["project_over_baseline"] >= 0.95
    if args.processes:
        report["accelerate_launch"] = two_processes(args.process_steps)
    return report


def full_run(args) -> dict:
    """2 epochs of each of --full-configs on the same data, measured before and after: what
    each configuration learns, side by side, with paired intervals on their differences."""
    from persona_lib.chat import generate_replies
    from persona_lib.dataset import distinct_n, heldout_prompts, load_knowledge, shipped_splits
    from persona_lib.metrics import (
        any_phrase,
        knowledge_recall,
        paired_bootstrap,
        recall_difference,
    )
    from persona_lib.models import load_model
    from persona_lib.plots import loss_curve
    from persona_lib.spec import load_spec
    from persona_lib.train import TrainConfig, read_loss_log, train

    names = [c.strip() for c in args.full_configs.split(",")]
    unknown = [c for c in names if c not in PROJECT]
    if unknown:
        sys.exit(f"--full-configs: unknown {unknown}; choose from {', '.join(PROJECT)}")
    spec = load_spec("taskmaster")
    prompts = heldout_prompts(spec, args.prompts)
    knowledge = load_knowledge()

    def measure(model, tokenizer, label):
        kw = dict(max_new_tokens=args.max_new_tokens, desc=label)
        replies = generate_replies(model, tokenizer, [p["messages"] for p in prompts], **kw)
        answers = generate_replies(model, tokenizer, [[{"role": "user", "content": q["question"]}] for q in knowledge],
                                   **{**kw, "desc": f"{label}, knowledge"})
        flags = any_phrase(replies, spec.signature_vocabulary)
        recall = knowledge_recall(knowledge, answers)
        return {"signature_rate": round(sum(flags) / len(flags), 3), "distinct_2": round(distinct_n(replies, 2), 3),
                "knowledge_recall_percent": round(recall["recall_percent"], 1),
                "flags": flags, "recall": recall, "replies": replies}

    base, tokenizer = load_model(args.model)
    before = measure(base, tokenizer, "base")
    del base
    splits = shipped_splits("taskmaster")
    runs = {}
    for name in names:
        config = TrainConfig.cpu(model_id=args.model, max_steps=args.max_steps, **PROJECT[name])
        print(f"\n== {name}: {config.num_epochs:g} epochs", flush=True)
        rate_before = matmul_rates()
        out = Path(args.output) / name if args.output else Path(tempfile.mkdtemp(prefix=f"train_cpu_full_{name}_"))
        start = time.perf_counter()
        result = train(config, splits["train"], out, eval_records=splits["validation"])
        wall = time.perf_counter() - start
        rate_after = matmul_rates()
        after = measure(result.model, result.tokenizer, name)
        del result.model
        log = read_loss_log(out)
        loss_curve(log, title=f"{args.model}, TaskMaster, TrainConfig.cpu() {name}",
                   path=Path(args.results or RESULTS / "train_cpu_full.json").with_name(f"train_cpu_full_{name}.png"))
        manifest = result.manifest
        precision = manifest.get("precision")
        rate = (rate_before[precision] + rate_after[precision]) / 2
        tps = result.tokens_per_second
        runs[name] = {
            "wall_seconds_train_call": round(wall, 1), "train_seconds": manifest["timings"]["train_s"],
            "tokens_per_second": tps, "precision": precision,
            "share_of_ceiling": round(4 * manifest["parameters"]["total"] * tps / (rate * 1e9), 3),
            "matmul_gflops": {"before": {k: round(v, 1) for k, v in rate_before.items()},
                              "after": {k: round(v, 1) for k, v in rate_after.items()}},
            "steps": manifest["steps"], "metrics": manifest["metrics"],
            "validation_loss": {row["step"]: round(row["eval_loss"], 4) for row in log if "eval_loss" in row},
            "after": after}
    report = {
        "what": "TrainConfig.cpu() on the embedded model: 2 epochs over the shipped TaskMaster training split at "
                "max_seq_length 512, per configuration; persona measure and diversity on held-out prompts without "
                "a system prompt",
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "load_average": os.getloadavg(), "goal_seconds": 480,
        "learning_rate": TrainConfig.cpu().learning_rate, "data": manifest["data"],
        "prompts": len(prompts), "knowledge_questions": len(knowledge),
        "before": {k: v for k, v in before.items() if k not in ("flags", "recall", "replies")},
        "configs": {name: {**{k: v for k, v in run.items() if k != "after"},
                           "after": {k: v for k, v in run["after"].items() if k not in ("flags", "recall", "replies")}}
                    for name, run in runs.items()},
        "examples": [{"prompt": p["messages"][-1]["content"], "before": b,
                      **{name: run["after"]["replies"][k] for name, run in runs.items()}}
                     for k, (p, b) in enumerate(list(zip(prompts, before["replies"]))[:6])],
    }
    if len(names) == 2:
        first, second = (runs[n]["after"] for n in names)
        report["difference"] = {
            "what": f"{names[1]} minus {names[0]}, paired bootstrap 95% intervals over prompts / questions",
            "signature_rate": {k: round(v, 3) if isinstance(v, float) else v
                               for k, v in paired_bootstrap(first["flags"], second["flags"]).items()},
            "knowledge_recall_points": {k: round(v, 2) if isinstance(v, float) else v
                                        for k, v in recall_difference(first["recall"], second["recall"]).items()},
            "train_seconds_ratio": round(runs[names[0]]["train_seconds"] / runs[names[1]]["train_seconds"], 2),
            "validation_loss_max_abs_difference": round(max(
                abs(runs[names[0]]["validation_loss"][s] - runs[names[1]]["validation_loss"][s])
                for s in runs[names[0]]["validation_loss"] if s in runs[names[1]]["validation_loss"]), 4)}
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4,
                        help="optimizer steps per configuration (8 conversations each; TRL's bf16 default takes "
                             "about 6 minutes a step on 2 cores)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="run every configuration this many times, interleaved; each one's best round counts")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated, from {', '.join(CONFIGS + tuple(TRIALS))} "
                             "(default: all but the trials)")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the operator profile of baseline and project (their first round)")
    parser.add_argument("--processes", action=argparse.BooleanOptionalAction, default=True,
                        help="also run fine_tune_persona.py in one process and under accelerate launch with two")
    parser.add_argument("--process-steps", type=int, default=6, help="optimizer steps of each --processes run")
    parser.add_argument("--persona", default="taskmaster",
                        help="whose shipped training split (captain_codebeard's conversations are the longest)")
    parser.add_argument("--model", default="embedded",
                        help="embedded (the benchmark's model) or tiny (a plumbing check)")
    parser.add_argument("--full-run", action="store_true", help="the 2-epoch run with before/after measures instead")
    parser.add_argument("--prompts", type=int, default=40,
                        help="held-out prompts for --full-run (all ordinary ones if fewer)")
    parser.add_argument("--max-new-tokens", type=int, default=120, help="reply length for --full-run's measures")
    parser.add_argument("--max-steps", type=int, default=-1, help="--full-run: stop early (a plumbing check only)")
    parser.add_argument("--full-configs", default="baseline,project",
                        help=f"--full-run: the configurations to train, from {', '.join(PROJECT)}")
    parser.add_argument("--output", default="", help="--full-run: a folder to keep the adapters in (one subfolder "
                                                       "per configuration; default: temporary folders)")
    parser.add_argument("--results", default="", help="JSON path (default bench/results/train_cpu[_full].json)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    report = full_run(args) if args.full_run else speed(args)
    path = Path(args.results or RESULTS / ("train_cpu_full.json" if args.full_run else "train_cpu.json"))
    write_json(path, report)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
