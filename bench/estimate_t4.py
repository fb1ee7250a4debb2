"""What lessons 4, 6 and 7 should cost on Colab's free T4: an estimate, not a measurement.

No T4 has run the chapter yet (bench/rehearse_gpu.py will measure it on the first GPU lent).
Until then the lesson headers quote these figures, labelled as estimates, computed from
counted work and stated assumptions:

- training: the tokens each lesson trains on (the shipped data through the project's own
  tokenizer proxy, the embedded model's, times epochs or the update minimums) times 6 FLOPs per
  parameter and token (forward 2, backward through activations 2, and the recompute of
  gradient checkpointing 2; a LoRA base gets no weight gradients), over an assumed effective
  T4 throughput for 4-bit QLoRA (ASSUMED_TFLOPS, a quarter of the T4's 65 TFLOP/s fp16 tensor
  peak: dequantising NF4 weights and small batches keep real runs well below peak);
- export: llama.cpp's conversion and quantisation measured on this project's CPU for the 135M
  model (bench/results/export.json), scaled by parameter count to the 3B model (Colab's free
  runtime has 2 vCPUs, like this machine).

    python bench/estimate_t4.py          # -> bench/results/t4_estimate.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PARAMS_3B = 3.21e9  # Llama-3.2-3B-Instruct
PARAMS_135M = 134.5e6  # SmolLM2-135M-Instruct
ASSUMED_TFLOPS = 16.0  # effective T4 throughput for 4-bit QLoRA with gradient checkpointing (an assumption)
FLOPS_PER_PARAM_TOKEN = 6


def main() -> int:
    from persona_lib.dataset import shipped_splits
    from persona_lib.models import load_tokenizer
    from persona_lib.multi import MultiConfig
    from persona_lib.train import TrainConfig

    tokenizer = load_tokenizer("embedded")

    def tokens(records) -> int:
        texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in records]
        return sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])

    t4 = TrainConfig.colab_t4()
    per_update = t4.batch_size * t4.gradient_accumulation_steps
    splits = {slug: shipped_splits(slug)["train"] for slug in ("taskmaster", "captain_codebeard", "zen_coder")}
    mean_tokens = {slug: tokens(rs) / len(rs) for slug, rs in splits.items()}

    def minutes(n_tokens: float) -> float:
        return FLOPS_PER_PARAM_TOKEN * PARAMS_3B * n_tokens / (ASSUMED_TFLOPS * 1e12) / 60

    lesson4_tokens = t4.num_epochs * tokens(splits["taskmaster"])
    multi = MultiConfig()
    updates = {slug: max(multi.min_steps_by_persona.get(slug, multi.min_steps),
                         int(t4.num_epochs * len(splits[slug]) / per_update)) for slug in splits}
    lesson6_tokens = {slug: updates[slug] * per_update * mean_tokens[slug] for slug in splits}
    conditioned = sum(lesson6_tokens.values())  # the conditioned adapter sees the separate runs' budget together
    export = json.loads((RESULTS / "export.json").read_text())["steps"]
    scale = PARAMS_3B / PARAMS_135M
    export_min = (export["f16"]["seconds"] + export["Q4_K_M"]["seconds"] + export["Q8_0"]["seconds"]) * scale / 60

    report = {
        "what": "estimated T4 minutes for the chapter's heavy steps (not measured; see the docstring)",
        "assumptions": {"params_3b": PARAMS_3B, "effective_tflops": ASSUMED_TFLOPS,
                        "flops_per_param_token": FLOPS_PER_PARAM_TOKEN,
                        "tokenizer": "the embedded SmolLM2 tokenizer as a proxy for Llama 3.2's",
                        "t4_preset": {k: getattr(t4, k) for k in ("batch_size", "gradient_accumulation_steps",
                                                                 "num_epochs", "max_seq_length")}},
        "lesson4_training": {"tokens": round(lesson4_tokens), "minutes": round(minutes(lesson4_tokens), 1)},
        "lesson6_training": {"updates": updates, "tokens": {k: round(v) for k, v in lesson6_tokens.items()},
                             "minutes_separate": round(minutes(sum(lesson6_tokens.values())), 1),
                             "minutes_conditioned": round(minutes(conditioned), 1),
                             "minutes_all_four": round(minutes(sum(lesson6_tokens.values()) + conditioned), 1)},
        "lesson7_convert_and_quantize_cpu": {"minutes": round(export_min, 1), "scale_from_135m": round(scale, 1)},
    }
    (RESULTS / "t4_estimate.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k.startswith("lesson")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
