"""TRL's side of training: the SFTConfig for a TrainConfig and the SFTTrainer subclass both
backends train with (length-grouped batches, the LM head only on labelled tokens, LoRA matmuls
in bf16 on a CPU with bf16 base weights, and, asked for, freed memory kept between steps),
plus the callbacks that write the loss log and draw the progress bar. `persona_lib.train.train`
builds and runs it."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

from persona_lib import io

if TYPE_CHECKING:
    from persona_lib.train import TrainConfig


# Validation passes per run with eval_steps=-1 (at most), the last at the final step. A pass costs the
# same at any run length (one forward pass over the validation set: 5-26 s on the embedded model
# on 2 CPU cores, bench/results/multi_training_22.json), so a fixed interval of 11 updates made
# the longest runs validate most: lesson 6's conditioned run (240 updates, 22 passes) spent a
# fifth of its time on it. Six points still draw the curve and show a validation loss turning up.
VALIDATIONS = 6


def eval_interval(eval_steps: int, total_steps: int) -> int | None:
    """Updates between validation passes: `eval_steps` when positive, None (only the final pass
    `train` adds) for 0, and for -1 the even interval that gives at most VALIDATIONS passes in
    `total_steps`, the final one included."""
    if eval_steps >= 0:
        return eval_steps or None
    if total_steps < 1:
        raise ValueError("eval_steps=-1 spaces validation over the run: give its total_steps")
    return math.ceil(total_steps / VALIDATIONS)


# The LM head and its cross-entropy run over the labelled positions in chunks of at most this
# many bytes of fp32 logits (128 positions of SmolLM2's 49,152-token vocabulary). The result is
# the same; the blocks are not. Whole, a batch's logits and their softmax are a few blocks of
# 100-400 MB, each of a new size every batch: glibc maps every block over 32 MB on its own and
# unmaps it when freed, so every step the kernel mapped and zeroed them again page by page, and a
# heap that keeps them (kept_memory) fragments around them. Under 32 MB they come from the heap
# and are reused step after step. On Captain Codebeard's conversations: 100,000-184,000 page
# faults a step against 631,000-662,000, 1.01-1.05x faster (1.03x over 16 steps), the same losses
# (bench/results/train_cpu_loss_chunks.json, train_cpu_loss_chunks_16.json; kept_memory.json
# for the heap).
LOSS_CHUNK_BYTES = 24 * 2**20
# A trainer's loss_chunk_rows that puts every labelled position in one chunk: the loss as it was
# before the chunks, which the benchmarks keep as a trial.
WHOLE_LOSS = 2**31

# glibc's mallopt parameters (malloc.h) and the values kept_memory leaves behind.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
MMAP_MAX_DEFAULT = 65536
MMAP_THRESHOLD_SETTLED = 32 * 2**20  # the most glibc's dynamic threshold rises to on 64-bit
TRIM_THRESHOLD_SETTLED = 2 * MMAP_THRESHOLD_SETTLED


@contextlib.contextmanager
def kept_memory():
    """glibc's malloc keeps the memory freed inside the block for the next allocation, instead of
    giving it back to the kernel.

    A training step allocates and frees the same few GB of activations every time. By default
    glibc unmaps each freed block over 32 MB (the attention matrices of a long batch, the LM
    head's logits) and trims the heap top beyond 64 MB, so the next step maps all of it again
    and the kernel zeroes it page by page: 87,000 to 140,000 page faults a step on TaskMaster's
    data on the embedded model, 0 to 300 inside this block (bench/results/train_cpu_memory.json,
    where the project's configuration was then run with it). The same effect is
    what PyTorch's CPU tuning guide gets by preloading jemalloc or tcmalloc; mallopt needs no
    library and can be undone. On leaving, blocks over 32 MB are unmapped again and the heap
    trimmed beyond 64 MB (where glibc's own thresholds settle during training), and the kept
    memory goes back to the kernel (malloc_trim). Nothing happens on a C library other than glibc.

    The cost is memory: the heap only grows, and past what a step needs, because a freed block
    too small for the next request is passed over for fresh memory. The loss over all of a
    batch's positions at once made it grow fastest (its blocks of 100-400 MB are a new size every
    batch): Captain Codebeard's 40 updates in a fresh process peaked at 10.76 GB with it against
    7.98 GB without, and lesson 6's four trainings in one process reached 18 GB
    (bench/results/multi_training_kept_memory.json). With the loss in chunks (LOSS_CHUNK_BYTES)
    the same 40 updates peak at 7.59 GB with it and 7.58 GB without, 361 s against 376 s
    (bench/bench_kept_memory.py, kept_memory.json). Over 120 of Codebeard's updates, as many as
    lesson 6's longest persona run, on an AMD EPYC without AVX-512: 1,981 s against 2,085 s
    (1.05x), 437 page faults a step against 184,000, and the resident memory level at 8.7-8.9 GB
    from the first update to the last, where the default's swings between 5.8 and 7.9 GB (peaks
    8.87 and 8.46 GB; kept_memory_120_no_avx512.json): it does not pile up. Lesson 6's three
    persona trainings in one process with it, on an AMD EPYC with AVX512-BF16 (bench_multi.py
    --train-only --separate-only --keep-memory, multi_training_kept_memory_separate.json): 2,071 s
    against the default's 2,038 s (multi_training.json), TaskMaster 1.04x, Codebeard 1.01x, Zen
    Coder 0.84x, peak 10.3 GB against 9.8. So it stays off (TrainConfig.cpu_keep_memory): a few
    percent on one run, none over a lesson, and the memory held for the whole run."""
    libc = ctypes.CDLL("libc.so.6") if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # an int: the largest glibc takes
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, MMAP_MAX_DEFAULT)
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_SETTLED)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_SETTLED)
        libc.malloc_trim(0)


def sft_config(config: TrainConfig, output_dir: str | os.PathLike, *, precision: str, cuda: bool,
               has_eval: bool, backend: str, total_steps: int = 0, **extra):
    """TRL's SFTConfig for a TrainConfig.

    On CPU this is the configuration measured fastest by bench/bench_train_cpu.py, and it is
    why the CPU path can keep SFTTrainer instead of a hand-written loop: no TRL bf16 autocast
    of fp32 weights (bf16, where the CPU has it, lives in the base weights, and the trainer
    subclass runs the LoRA matmuls in bf16 too; see resolve_precision and `cpu_autocast`), no
    gradient checkpointing (TRL turns it on by default: +30% compute for memory a CPU box
    has), length-grouped batches (27% padding at batch 4 in random order, 6% grouped), and the
    LM head only on labelled tokens (loss="target_logits", computed by the trainer subclass).
    Measured side by side on 2 AMD EPYC cores with AVX512-BF16, non-pad tokens/s and share of
    the matmul ceiling of the precision each runs in (bench/results/train_cpu_autocast.json):
    bf16 LoRA matmuls 345 (45% of bf16), fp32 LoRA matmuls 285 (37%), in fp32 219 (61% of
    fp32), a plain fp32 PyTorch loop 213 (60%), TRL's defaults 154 (20% of bf16), TRL's
    defaults with bf16 off 102 (29% of fp32); eager attention then adds 1.05-1.16x
    (train_cpu_attention.json), and the loss in chunks of positions 1.01-1.05x (LOSS_CHUNK_BYTES).
    On an AMD EPYC without AVX-512 everything runs in fp32: 193.5 against the issue's baseline's
    189.4 (58% of fp32, no slower), the attention implementations level (train_cpu_no_avx512.json).
    Keeping freed memory for the next step (`kept_memory`, `cpu_keep_memory`) adds 1.01-1.07x
    round by round (train_cpu_memory.json), 1.05x over 120 updates with the loss in chunks, but
    0.98x over lesson 6's three persona trainings: off by default, see kept_memory.
    """
    from trl import SFTConfig

    eval_every = eval_interval(config.eval_steps, total_steps) if has_eval else None
    args = dict(
        output_dir=str(output_dir),
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=config.weight_decay,
        optim=config.optim,
        seed=config.seed,
        data_seed=config.seed,
        max_length=config.max_seq_length,
        bf16=cuda and precision == "bf16",  # autocast on GPUs; on CPU the bf16 is in the weights
        fp16=cuda and precision == "fp16",
        use_cpu=not cuda,
        # Unsloth applies its own checkpointing in get_peft_model; HF's would run it twice.
        gradient_checkpointing=config.gradient_checkpointing and backend == "transformers",
        gradient_checkpointing_kwargs={"use_reentrant": False},
        # Under accelerate launch (DDP) every LoRA weight gets a gradient at every step: no search
        # for unused parameters (DDP's extra pass over the autograd graph, which it warns about).
        ddp_find_unused_parameters=False,
        loss_type="nll" if config.loss == "target_logits" else config.loss,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval and eval_every else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        report_to="none",
        disable_tqdm=True,  # our own progress bar (one line, loss and tokens/s)
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
        dataset_num_proc=None,
    )
    args.update(extra)
    return SFTConfig(**args)


def _trainer_class():
    """SFTTrainer with a seeded, epoch-aware length-grouped sampler.

    transformers' own LengthGroupedSampler draws from the global RNG when each epoch starts,
    which a resumed run has not replayed; this one derives the order from (seed, epoch), so a
    run resumed mid-epoch sees exactly the batches the uninterrupted run saw.
    """
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices
    from trl import SFTTrainer

    class Sampler(torch.utils.data.Sampler):
        def __init__(self, lengths, group, seed):
            self.lengths, self.group, self.seed, self.epoch = lengths, group, seed, 0

        def set_epoch(self, epoch):
            self.epoch = int(epoch)

        def __len__(self):
            return len(self.lengths)

        def __iter__(self):
            generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
            return iter(get_length_grouped_indices(self.lengths, self.group, generator=generator))

    class PersonaSFTTrainer(SFTTrainer):
        group_by_length = True
        target_logits = False
        loss_chunk_rows = 0  # 0: as many labelled positions as fit LOSS_CHUNK_BYTES of fp32 logits
        lora_in_bf16 = False
        keep_memory = False

        def train(self, *args, **kwargs):
            with kept_memory() if self.keep_memory else contextlib.nullcontext():
                return super().train(*args, **kwargs)

        def _lora_in_bf16(self, model):
            """With `lora_in_bf16` (a CPU run with bf16 base weights): autocast to bf16 with PEFT's
            input cast turned off, so the LoRA matmuls run in bf16 like the base ones. Without it
            PEFT casts every layer's input to the fp32 LoRA weights and back: fp32 matmuls and
            two copies per projection. The LoRA weights and their optimizer state stay fp32."""
            if not self.lora_in_bf16:
                return contextlib.nullcontext()
            from peft.helpers import disable_input_dtype_casting

            stack = contextlib.ExitStack()
            stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
            stack.enter_context(disable_input_dtype_casting(self.accelerator.unwrap_model(model)))
            return stack

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """With `target_logits`: the decoder's hidden states, then the LM head and cross-entropy
            only at positions that have a label. HF's loss projects every position onto the
            vocabulary (a fifth of SmolLM2's compute), TRL's chunked loss projects only labelled
            ones but recomputes them in the backward pass; this does neither. Llama-family
            models only (no logit scaling or soft-capping), which is what the CPU path trains.

            The forward pass goes through `model` as the trainer hands it over, so that under
            `accelerate launch` DistributedDataParallel sees it and averages the gradients; the
            decoder's output is taken with a hook, and the model itself projects one position."""
            if not self.target_logits:
                with self._lora_in_bf16(model):
                    return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            inputs.pop("_prediction_loss_only", None)
            causal_lm = self.accelerator.unwrap_model(model).get_base_model()
            hidden = []
            hook = causal_lm.base_model.register_forward_hook(lambda module, args, output: hidden.append(output[0]))
            try:
                with self._lora_in_bf16(model):
                    # One position's logits, asked for by index: an index gathers a contiguous
                    # (batch, 1, hidden) copy that the LM head multiplies as one matrix, where the
                    # slice `logits_to_keep=1` gives is strided and made torch.matmul expand the
                    # 49k-row LM head once per conversation (about 0.45 s an update on 2 cores, profiled).
                    first = torch.zeros(1, dtype=torch.long, device=inputs["input_ids"].device)
                    model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False,
                          logits_to_keep=first)
            finally:
                hook.remove()
            target = inputs["labels"][:, 1:]
            keep = target != -100
            head, rows, labels = causal_lm.get_output_embeddings(), hidden[0][:, :-1][keep], target[keep]
            chunk = self.loss_chunk_rows or max(1, LOSS_CHUNK_BYTES // (4 * head.weight.shape[0]))
            loss = sum(torch.nn.functional.cross_entropy(head(rows[i:i + chunk]).float(), labels[i:i + chunk],
                                                         reduction="sum")
                       for i in range(0, max(len(rows), 1), chunk))  # no labels: one empty chunk, a zero loss
            # Divided by the labelled tokens of the whole accumulated batch, like HF's own loss.
            loss = loss / (num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1))
            if num_items_in_batch is not None and self.args.average_tokens_across_devices:
                # num_items_in_batch counts every process's tokens and DDP averages the gradients
                # over processes: scaled back up, as the Trainer's own compute_loss does.
                loss = loss * self.accelerator.num_processes
            return (loss, {"loss": loss}) if return_outputs else loss

        # Wall time of the validation passes and checkpoint saves inside train(): the manifest
        # splits train_s with them, since a benchmark of the optimizer steps alone sees neither.
        def evaluate(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                self.phase_seconds["evaluate"] += time.perf_counter() - start

        def _save_checkpoint(self, model, trial):
            start = time.perf_counter()
            try:
                return super()._save_checkpoint(model, trial)
            finally:
                self.phase_seconds["checkpoint"] += time.perf_counter() - start

        def _get_train_sampler(self, train_dataset=None):
            if not self.group_by_length:
                return super()._get_train_sampler(train_dataset)
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return Sampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps, self.args.seed)

    return PersonaSFTTrainer


def build_trainer(config: TrainConfig, model, tokenizer, args, train_dataset, eval_dataset=None, *,
                  backend: str = "transformers"):
    """The SFTTrainer for a PEFT model and pre-tokenized datasets (what train() runs; the CPU
    benchmark measures exactly this)."""
    import datasets
    import torch
    from transformers import PrinterCallback

    datasets.disable_progress_bars()  # TRL's truncation pass over data that is already cut
    try:
        trainer = _trainer_class()(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                   processing_class=tokenizer)
    finally:
        datasets.enable_progress_bars()
    trainer.group_by_length = config.group_by_length
    trainer.phase_seconds = {"evaluate": 0.0, "checkpoint": 0.0}
    # Unsloth computes its own fused loss on the GPU; target_logits is the CPU path's.
    trainer.target_logits = config.loss == "target_logits" and backend == "transformers"
    trainer.lora_in_bf16 = (config.cpu_autocast and args.use_cpu and backend == "transformers"
                            and getattr(model, "get_base_model", lambda: model)().dtype == torch.bfloat16)
    trainer.keep_memory = config.cpu_keep_memory and args.use_cpu
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; our progress bar shows the losses
    return trainer


def training_callbacks(output_dir: Path, total_steps: int, progress: bool):
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class LossLog(TrainerCallback):
        """Rewrites loss_log.jsonl from the trainer's log history at every log event, so after a
        resume it holds exactly the history restored from the checkpoint plus what followed."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero:
                return
            rows = [{k: v for k, v in row.items() if k in ("step", "epoch", "loss", "eval_loss", "learning_rate",
                                                               "grad_norm", "num_input_tokens_seen")}
                    for row in state.log_history if "loss" in row or "eval_loss" in row]
            io.write_jsonl(output_dir / "loss_log.jsonl", rows)

    class Progress(TrainerCallback):
        """One bar: steps, the latest train and validation loss, and tokens per second."""

        def __init__(self):
            self.bar, self.start, self.tokens0, self.shown = None, 0.0, 0, {}

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=total_steps, initial=state.global_step, desc="training", unit="step",
                            disable=not (progress and state.is_world_process_zero), dynamic_ncols=True)
            self.start, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)
            rate = (state.num_input_tokens_seen - self.tokens0) / max(time.perf_counter() - self.start, 1e-9)
            self.shown["tok/s"] = f"{rate:.0f}"
            self.bar.set_postfix(self.shown, refresh=True)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.shown.update({k: f"{v:.3f}" for k, v in (logs or {}).items() if k in ("loss", "eval_loss")})

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.set_postfix(self.shown, refresh=True)
            self.bar.close()

    return [LossLog(), Progress()]
