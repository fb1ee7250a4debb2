"""Run inside the Colab-shaped lane with Unsloth installed (tests/test_colab_lane.py): Unsloth's
own SFTTrainer, generated on a CPU as a GPU runtime gets it, trains the tiny model through
persona_lib.train, and refuses what a T4 would refuse. Prints one JSON line of findings."""

import json
import os
import sys
import tempfile

os.environ["UNSLOTH_ALLOW_CPU"] = "1"  # unsloth 2026.10.9 imports on a CPU with this set
import unsloth  # noqa: E402,F401  (first, as on Colab: it patches transformers and TRL)
from unsloth.models.rl import _patch_trl_rl_trainers  # noqa: E402

_patch_trl_rl_trainers("sft_trainer")  # what unsloth does on a GPU: trl.SFTTrainer becomes UnslothSFTTrainer

import trl  # noqa: E402

from persona_lib.dataset import load_shipped  # noqa: E402
from persona_lib.masking import build_dataset  # noqa: E402
from persona_lib.models import resolve  # noqa: E402
from persona_lib.train import TrainConfig, load_for_training, train  # noqa: E402
from persona_lib.trainer import _trainer_class, build_trainer, sft_config  # noqa: E402

found = {"sft_trainer": trl.SFTTrainer.__name__,
         "persona_trainer_bases": [c.__name__ for c in _trainer_class().__mro__[:3]]}
records = load_shipped("taskmaster")[:12]
out = tempfile.mkdtemp()
result = train(TrainConfig.smoke(max_steps=2, eval_steps=0, save_steps=2, precision="bf16"), records[:8], out,
               eval_records=records[8:], progress=False)
found.update(steps=result.manifest["steps"], train_loss=result.train_loss,
             adapter_saved=os.path.isfile(os.path.join(out, "adapter_model.safetensors")))

# A T4 model in fp16 asked for bf16 training: Unsloth's trainer refuses it (a TypeError).
config = TrainConfig.smoke(max_steps=1)
model, tokenizer = load_for_training(config, resolve("tiny"), "fp16", cuda=False)
data = build_dataset(records[:4], tokenizer, config.max_seq_length).dataset
try:
    build_trainer(config, model, tokenizer, sft_config(config, tempfile.mkdtemp(), precision="bf16", cuda=True,
                                                        has_eval=False, backend="unsloth", use_cpu=True), data)
    found["fp16_model_bf16_args"] = "accepted"
except TypeError as e:
    found["fp16_model_bf16_args"] = f"TypeError: {e}"[:200]
print(json.dumps(found))
sys.exit(0)
