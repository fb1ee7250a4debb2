"""GPU training: Unsloth against transformers + PEFT on a Llama-3.2-3B-shaped model, QLoRA at 2048.

No download: a random-init model with Llama-3.2-3B-Instruct's exact shape (28 layers, hidden
3072, 24 query / 8 KV heads, MLP 8192, 128,256-token tied vocabulary, llama3 RoPE scaling) is
built on the GPU in bf16 and saved once under the persona-lab cache, with a word-level
tokenizer of the same vocabulary size (the data is random token ids, so only the shapes
matter). Each backend then runs in its own process (Unsloth patches transformers when
imported, so the two must not share one), the same way:

- ``unsloth``: FastLanguageModel.from_pretrained(load_in_4bit=True) and get_peft_model with
  use_gradient_checkpointing="unsloth";
- ``transformers``: AutoModelForCausalLM in 4-bit NF4 with double quantization
  (BitsAndBytesConfig), prepare_model_for_kbit_training, PEFT LoRA, gradient checkpointing.

Both: LoRA r=16, alpha 16, all seven projections, batch 1 x 2048 tokens, 8-bit AdamW at 2e-4,
bf16 where the GPU has it (fp16 on a T4), the same plain training loop; 3 warm-up steps, then
--steps timed steps. Reported: tokens per second, peak allocated and reserved memory, and
whether the peak fits a free Colab T4's usable ~14.7 GB. Results go to
bench/results/train_gpu.json with the GPU named.

    python bench/bench_train_gpu.py                  # both backends, 10 timed steps
    python bench/bench_train_gpu.py --backends transformers --steps 5

Needs a CUDA GPU with bitsandbytes (and unsloth for its row); on a machine without CUDA it
exits with a message and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "train_gpu.json"
T4_BUDGET_GB = 14.7  # a free Colab T4 shows 15.0 GB; CUDA context and fragmentation take the rest
LLAMA_32_3B = dict(
    vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
    rope_scaling={"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128009, hidden_act="silu",
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def model_dir() -> Path:
    root = Path(os.environ.get("PERSONA_LAB_CACHE") or Path.home() / ".cache" / "persona-lab")
    return root / "models" / "random-llama-3.2-3b"


def build_model(dest: Path) -> Path:
    """The random-init 3B-shaped model and a matching word-level tokenizer, saved once."""
    if (dest / "config.json").is_file():
        return dest
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = LlamaConfig(**LLAMA_32_3B)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    tmp = dest.with_name(dest.name + ".tmp")
    model.save_pretrained(tmp)
    del model
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>"]
    words = [f"w{i}" for i in range(config.vocab_size - len(specials))]
    vocab = {w: i for i, w in enumerate(words + specials)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                        pad_token="<|finetune_right_pad_id|>", unk_token="w0")
    tokenizer.save_pretrained(tmp)
    tmp.rename(dest)
    return dest


def load_unsloth(path: str, seq: int, seed: int):
    from unsloth import FastLanguageModel  # before transformers, in this process

    model, _ = FastLanguageModel.from_pretrained(model_name=path, max_seq_length=seq, dtype=None, load_in_4bit=True)
    return FastLanguageModel.get_peft_model(model, r=16, target_modules=TARGETS, lora_alpha=16, lora_dropout=0,
                                            bias="none", use_gradient_checkpointing="unsloth", random_state=seed)


def load_transformers(path: str, dtype, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=dtype, device_map={"": 0},
                                                 attn_implementation="sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(seed)
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                            bias="none", task_type="CAUSAL_LM"))


def worker(backend: str, path: str, seq: int, steps: int, warmup: int, seed: int) -> dict:
    """One backend in this process: load, train warmup + steps on random tokens, measure."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (patches transformers; must be first)
    import bitsandbytes as bnb
    import torch

    from persona_lib.train import native_bf16

    bf16 = native_bf16(cuda=True)
    dtype = torch.bfloat16 if bf16 else torch.float16
    start = time.perf_counter()
    model = load_unsloth(path, seq, seed) if backend == "unsloth" else load_transformers(path, dtype, seed)
    load_s = time.perf_counter() - start
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = bnb.optim.AdamW8bit(params, lr=2e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=not bf16)
    generator = torch.Generator(device="cuda").manual_seed(seed)
    torch.cuda.reset_peak_memory_stats()
    marks = []
    for step in range(warmup + steps):
        ids = torch.randint(0, LLAMA_32_3B["vocab_size"] - 8, (1, seq), device="cuda", generator=generator)
        with torch.autocast("cuda", dtype=dtype):
            loss = model(input_ids=ids, labels=ids).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
    timed = marks[-1] - marks[warmup - 1]
    gb = 1024**3
    return {
        "backend": backend, "precision": "bf16" if bf16 else "fp16", "load_s": round(load_s, 1),
        "timed_steps": steps, "seconds": round(timed, 2), "tokens_per_second": round(steps * seq / timed, 1),
        "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / gb, 2),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / gb, 2),
        "trainable_parameters": sum(p.numel() for p in params), "final_loss": round(float(loss), 4),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="unsloth,transformers", help="comma-separated: unsloth, transformers")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per sequence (batch 1)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per backend")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (kernels compile, caches fill)")
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")

    import torch

    if not torch.cuda.is_available():
        print("bench_train_gpu.py needs a CUDA GPU (Unsloth and bitsandbytes' 4-bit kernels are CUDA-only); "
              "none is visible here, so nothing was measured. Run it on a GPU machine or a Colab T4 runtime.",
              file=sys.stderr)
        return 2
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.model_dir, args.seq, args.steps, args.warmup, args.seed)))
        return 0

    path = build_model(model_dir())
    rows, failures = {}, {}
    for backend in [b.strip() for b in args.backends.split(",")]:
        print(f"== {backend}", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--worker", backend, "--model-dir", str(path),
                               "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
                               "--seed", str(args.seed)], capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            failures[backend] = (proc.stderr or proc.stdout)[-3000:]
            print(f"{backend} failed:\n{failures[backend]}", file=sys.stderr)
            continue
        row = json.loads(lines[-1][len("RESULT "):])
        row["fits_t4"] = row["peak_reserved_gb"] <= T4_BUDGET_GB
        rows[backend] = row
        print(json.dumps(row, indent=1), flush=True)
    report = {
        "what": "QLoRA (4-bit NF4) LoRA r=16 on a random-init Llama-3.2-3B-shaped model, batch 1 x "
                f"{args.seq} tokens, 8-bit AdamW; tokens/s and peak memory per backend",
        "gpu": torch.cuda.get_device_name(0), "t4_budget_gb": T4_BUDGET_GB, "seq": args.seq,
        "note": "peak memory transfers to a T4; tokens/s does not (a T4 is ~10-20x slower than an H100 "
                "and has no bf16)",
        "results": rows, "failures": failures,
    }
    if "unsloth" in rows and "transformers" in rows:
        u, t = rows["unsloth"], rows["transformers"]
        report["unsloth_speedup"] = round(u["tokens_per_second"] / t["tokens_per_second"], 2)
        report["unsloth_memory_ratio"] = round(u["peak_reserved_gb"] / t["peak_reserved_gb"], 2)
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".tmp").write_text(json.dumps(report, indent=2) + "\n")
    os.replace(out.with_suffix(".tmp"), out)  # atomic: a reader never sees half a file
    print(f"wrote {args.results}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
