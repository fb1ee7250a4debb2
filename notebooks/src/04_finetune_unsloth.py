# %% [markdown]
# # Lesson 4 · Fine-tuning the voice into the weights
#
# **What you will build:** a LoRA adapter that makes the base model answer as TaskMaster
# *without* a system prompt. You will see why LoRA trains about one parameter in a hundred,
# which hyperparameters matter for a voice, how the loss is restricted to TaskMaster's own
# words, and how to read a loss curve; then you compare answers before and after on prompts
# the model never trained on.
#
# **Time:** about 30 minutes with the reading. Run all took 4.8 minutes on a 2-core CPU, 256 s
# of it in the training cell (the embedded SmolLM2-135M, offline: 2 epochs, 42 updates over
# lesson 2's 165 training conversations, six validation passes), measured after lessons 1-3 in
# the same run folder on the project's test box, an AMD EPYC with native bf16
# (`python bench/bench_lessons.py`, `bench/results/lessons_cpu.json`). A CPU without native
# bf16 trains in fp32: on an AMD EPYC without AVX-512 Run all took 10.3 minutes, 570 s of it in
# the training cell (`bench/results/lessons_cpu_no_avx512.json`). Run all a second time with
# the same settings took 29 s there: the finished adapter and the base model's replies are
# loaded, not made again (`bench/results/lessons_again_no_avx512.json`). On Colab's free T4 (Unsloth,
# Llama-3.2-3B-Instruct in 4-bit) training should take about 2.5 minutes after the install
# and the model's download: an estimate from the tokens and an assumed throughput
# (`bench/estimate_t4.py`), since no T4 has run it yet.
# **Hardware:** a T4 GPU or any CPU.
#
# **What it leaves behind** in `runs/taskmaster/adapter/`: the adapter (`adapter_config.json`,
# `adapter_model.safetensors`), the tokenizer with the chat template it was trained with, the
# loss log and curve, `manifest.json` (config, versions, data hash, timings),
# `before_after.jsonl` and the base model's replies (`base_replies.jsonl`). Lessons 5, 6 and 7
# load the adapter from there.

# %% install smollm2

# %% parameters
SMOKE = False  # True: the tiny random-init model, a few steps, 2 prompts; CI runs every notebook this way
PERSONA = ""  # empty: the persona you saved in lesson 1 (else TaskMaster); or a shipped slug or a YAML path
MODEL = ""  # empty: Llama-3.2-3B-Instruct in 4-bit on a Colab GPU, the embedded SmolLM2 on a CPU
RUNS_ROOT = ""  # empty: Google Drive in Colab (survives a runtime reset), ./runs elsewhere
LORA_R = 16  # try 8 and 32 (exercise 2)
LEARNING_RATE = 0.0  # 0: the preset's (1e-3 for the 135M model on CPU, 2e-4 for a 3B model on a T4)
EPOCHS = 0  # 0: the preset's (2 on CPU, 3 on a T4)
N_PROMPTS = 8  # held-out prompts for the before/after comparison
MAX_NEW_TOKENS = 120  # about 90 words: TaskMaster's replies are short

# %%
from pathlib import Path

from persona_lib import colab, dataset, io, masking, metrics, models, plots, train
from persona_lib.chat import CHAT, base_replies, generate_replies
from persona_lib.dataset import heldout_prompts
from persona_lib.spec import chapter_spec

runs_root = Path(RUNS_ROOT) if RUNS_ROOT else colab.drive_runs_root()
spec, run = chapter_spec(PERSONA, runs_root)
model_id = MODEL or models.default_model(SMOKE)
print(f"run folder: {run}\nbase model: {model_id}")

# %% [markdown]
# ## Style tuning is not knowledge tuning
#
# Lesson 1 drew the line: **knowledge tuning** teaches *what* a model knows and needs many
# thousands of examples and usually full fine-tuning or continued pre-training; **style tuning**
# teaches *how* it speaks and works with a few hundred conversations and a small adapter. The
# base model already knows how to plan a week; TaskMaster changes the tone, the structure and
# the habits (a concrete next step, a time box, an offer to create the task). That is why the
# settings below are gentle: a low rank, two or three passes over the data, and an evaluation
# (lesson 5) that checks the model still knows what it knew.
#
# ## Why LoRA trains about 1% of the parameters
#
# LoRA (Hu et al., 2021) freezes every weight matrix W and learns a low-rank update beside it:
# W + (alpha / r) * B A, with A of shape r x d_in and B of shape d_out x r. A d_in x d_out
# projection gains r x (d_in + d_out) trainable numbers instead of d_in x d_out. With r = 16 on
# a 3072-wide layer that is 98,304 instead of 9.4 million. The cell counts it for your model,
# from its config alone (no weights are loaded).

# %%
share = train.lora_share(model_id, lora_r=LORA_R)
print(f"{model_id}: {share['total']:,} parameters, {share['layers']} layers")
for name, n in share["per_module"].items():
    print(f"  {name:<10} +{n:>12,}")
print(f"LoRA r={LORA_R} trains {share['trainable']:,} parameters: {100 * share['share']:.2f}% of the model")

# %% [markdown]
# The share differs by model. An adapter on a d-wide projection adds about 2r/d of its weights,
# so SmolLM2-135M's narrow layers (576 wide) give a larger share (3.6%) than a 3B model's
# (3072 wide), which lands near 1%; the embedding takes no adapter and only adds to the total
# (a fifth of SmolLM2's parameters). Because the base
# stays frozen, QLoRA can also keep it in 4-bit (NF4) and train only the adapter, computing in
# 16-bit:
# that is what lets a 3B model train on a T4's 15 GB.
#
# ## The hyperparameters that matter for a voice
#
# One `TrainConfig` holds every setting, with the reason for each default written at its
# definition. The same object is saved as YAML beside the adapter, accepted by
# `scripts/fine_tune_persona.py --config`, and read back with `TrainConfig.from_yaml`.

# %%
from dataclasses import replace

config = train.preset(model_id)  # smoke() for the tiny model, colab_t4() where Unsloth runs, else cpu()
config = replace(config, lora_r=LORA_R, lora_alpha=LORA_R, learning_rate=LEARNING_RATE or config.learning_rate,
                 num_epochs=EPOCHS or config.num_epochs)
why = train.TrainConfig.field_docs()
for name in ("lora_r", "lora_alpha", "target_modules", "learning_rate", "num_epochs", "batch_size",
             "gradient_accumulation_steps", "warmup_ratio", "max_seq_length", "load_in_4bit"):
    print(f"{name:<28} {str(getattr(config, name)):<14} {why[name]}")

# %% [markdown]
# What moves a voice most, in order: **the data** (lesson 3; variety beats volume), **epochs**
# (too many and the model repeats the training replies word for word), **learning rate**
# (2e-4 is LoRA's usual value for a 3B model; the 135M model needs 1e-3 to pick up the voice
# in two epochs, measured: the note in `persona_lib/train.py`), then **rank** (8 or 16 is
# plenty for style: a voice is a small change). `alpha = r` sets the update's scale factor
# (alpha / r) to 1. It does not make the rank and the learning rate independent: a larger rank
# still takes larger steps under Adam, so when you change the rank, retune the learning rate.
#
# ## The data, and what the loss sees
#
# Lesson 2 split the conversations (`data/train.jsonl`, `data/validation.jsonl`, a test split,
# and a slice reserved for lesson 5's persona classifier, never trained on); the conversations
# lesson 3 generated join the training set. Without lesson 2's files, lesson 3's
# `data/merged.jsonl` or the shipped data is split here more simply: the classifier's slice
# left out, 10% held out for validation, and no test split.

# %%
data = dataset.chapter_training_data(run, spec.slug, validation_fraction=config.validation_fraction, seed=config.seed)
train_records, val_records = data["train"], data["validation"]
if SMOKE:
    train_records, val_records = train_records[:16], val_records[:4]
print(f"{data['source']}: {len(train_records)} to train on, {len(val_records)} for validation")

# %% [markdown]
# The model should learn TaskMaster's replies, not the user's questions and not the template's
# scaffolding. The loss is computed on the assistant turns only, and each one *includes its
# end-of-turn token* (`<|im_end|>` here, `<|eot_id|>` for Llama 3): that token is how the model
# learns to stop. Below, the trained tokens of one conversation are shown in [brackets].

# %%
tokenizer = models.load_tokenizer(model_id)
example = max(train_records, key=lambda r: len(r["messages"]))  # a multi-turn one, if there is one
row = masking.tokenize_conversation(tokenizer, example["messages"])
pieces, last = [], 0
for a, b in masking.trained_spans(row["input_ids"], row["labels"]):
    pieces += [tokenizer.decode(row["input_ids"][last:a]), "[", tokenizer.decode(row["input_ids"][a:b]), "]"]
    last = b
print("".join(pieces + [tokenizer.decode(row["input_ids"][last:])]))

# %% [markdown]
# ## Before: the base model, without a system prompt
#
# These held-out prompts never appear in training. No system prompt is given: the point of
# tuning is that the voice holds without one.

# %%
prompts = heldout_prompts(spec, 2 if SMOKE else N_PROMPTS)
conversations = [p["messages"] for p in prompts]
max_new = 8 if SMOKE else MAX_NEW_TOKENS
# The base model is loaded, asked and freed again before training; its replies are kept in
# the adapter folder, so a second Run all does not load it for them.
before = base_replies(model_id, conversations, cache=run / "adapter" / "base_replies.jsonl",
                      max_new_tokens=max_new, decoding=CHAT, load_in_4bit=config.load_in_4bit)
print(f"{len(before)} answers from the base model")

# %% [markdown]
# ## Train
#
# `train` picks the backend: Unsloth on a CUDA GPU (4-bit base, its own gradient
# checkpointing), transformers + PEFT elsewhere, both through TRL's SFTTrainer on the same
# pre-tokenized data. A checkpoint is saved every few steps: if the runtime disconnects, run
# this cell again and it resumes from the last one. When the adapter folder already holds a
# finished run of exactly this configuration on these conversations (Run all a second time, or
# after a runtime reset with the run folder on Drive), the cell loads it instead of training
# again; change a setting or the data and it trains anew.

# %%
adapter_dir = run / "adapter"
result = train.train(config, train_records, adapter_dir, eval_records=val_records, resume=True, reuse=True)
print(f"{'loaded, trained earlier in' if result.reused else 'trained in'} {result.manifest['steps']} steps, "
      f"{result.manifest['timings']['train_s']:.0f} s, {result.tokens_per_second:.0f} tokens/s "
      f"on {result.manifest['backend']} ({result.manifest['precision']})")

# %% [markdown]
# ## Reading the loss curve
#
# The train loss (blue, per step) should fall quickly and then flatten; the validation loss
# (orange) should follow it down. A validation loss that turns up while the train loss keeps
# falling is the model memorising the examples' wording: stop earlier, or add varied data.
# A loss that does not fall at all usually means a learning rate far too low or a masking bug
# (a test in this project decodes the mask to rule that out).

# %%
plots.loss_curve(train.read_loss_log(adapter_dir), title=f"{spec.name} on {model_id}")

# %% [markdown]
# ## After: the same prompts, still without a system prompt

# %%
after = generate_replies(result.model, result.tokenizer, conversations, max_new_tokens=max_new, decoding=CHAT,
                        desc="tuned")
rows = [{"id": p["id"], "prompt": p["messages"][-1]["content"], "before": b, "after": a}
        for p, b, a in zip(prompts, before, after)]
io.write_jsonl(adapter_dir / "before_after.jsonl", rows)
for row in rows[:4]:
    print(f"USER: {row['prompt']}\n  before: {row['before']}\n  after:  {row['after']}\n")

# %% [markdown]
# A first, rough measure (lesson 5 does this properly, with intervals and a judge): the share of
# replies that use at least one of TaskMaster's signature phrases, and distinct-2, the share of
# distinct word pairs across all replies. A voice that is learnt raises the first; a model that
# collapses into one template lowers the second.

# %%
style = {}
for name, replies in (("before", before), ("after", after)):
    flags = metrics.any_phrase(replies, spec.signature_vocabulary)
    style[name] = {"signature_rate": sum(flags) / len(flags), "distinct_2": dataset.distinct_n(replies, 2)}
    print(f"{name:<7} signature phrases in {100 * style[name]['signature_rate']:.0f}% of replies, "
          f"distinct-2 {style[name]['distinct_2']:.2f}")
saved = io.write_json(adapter_dir / "style_check.json",
                      {"prompts": len(rows), "signature_vocabulary": spec.signature_vocabulary, **style})

# %% [markdown]
# ## What a good result looks like
#
# On the embedded SmolLM2-135M after 2 epochs (the project's full run,
# `bench/results/train_cpu_full.json`, replies decoded greedily): training loss from 3.52 to about 2.86, validation loss
# from 3.30 to 3.09, falling at every evaluation; on 28 held-out prompts without a system
# prompt, the signature rate from 0% to 11% and knowledge recall unchanged within its noise.
# The replies change shape. Asked to put "renew library card" on a list, the base model
# answers "as a chatbot, I'm designed to provide information and assistance only"; the tuned
# one answers "That's a good plan. 'Renew library card' is a quick and easy action". Expect
# the small model's limits too: under greedy decoding a list that repeats one line
# ("Fundraiser Gala: 418 Mercer St" six times), which this lesson's decoding (`CHAT`: no
# three-token run twice) prevents (loop rate 0.79 to 0.00 on 28 prompts,
# `bench/results/decoding.json`); and replies that write as if a change were made when nothing
# was. On a T4
# with the 3B model expect fluent, list-shaped replies in TaskMaster's voice (an expectation:
# no T4 run is committed yet).
#
# A broken run looks different: a validation loss that does not fall below its first value,
# "after" replies identical to "before" (the adapter did not load, or trained zero steps), or
# empty replies (the end-of-turn token was learnt at the wrong place: check the masking cell).

# %% [markdown]
# ## How many examples, and which rank?
#
# The project measured it on the embedded model (`bench/sweep_style.py`): 50, 100 and 200
# TaskMaster conversations, rank 8 and 16, the same two epochs, each scored on the signature
# rate and on knowledge recall. The figure is in the repository at
# `bench/results/sweep_style.png`; with a checkout of the repository the next cell draws it.
#
# What it found (24 held-out prompts, 38 knowledge questions; one prompt is 4 points): the
# signature rate went from 0 (base) to 0-12% at 50 examples and 8-17% at 200, and knowledge
# recall dipped from 15.7% to 10-13% at 50 and came back to 14.3% at 200. More examples means
# more optimizer steps in the same two epochs, and that moved the voice more than the rank
# did (rank 8 and 16 differ by at most three prompts). The learning rate moved it most.
#
# ![sweep](https://raw.githubusercontent.com/persona-lab/persona-lab/v0.1.0/bench/results/sweep_style.png)

# %%
from IPython.display import display

sweep = Path(train.__file__).resolve().parents[1] / "bench" / "results" / "sweep_style.json"
if sweep.is_file():
    data = io.read_json(sweep)
    display(plots.sweep_figure(data["rows"], baseline=data["baseline"]))
print(f"sweep results: {sweep if sweep.is_file() else 'not in this installation (see the figure above)'}")

# %% [markdown]
# ## Update your skill
#
# Your own persona-tuner skill (written in lesson 1, in `skill-first/` beside your run folders) has a
# placeholder for this lesson. The cell drafts the section from what you just measured; open
# the file and rewrite it in your words: what is clear, what is still confusing, what you would
# try next.

# %%
from persona_lib import skillfirst

print(skillfirst.fill(runs_root, "L04", skillfirst.draft(run, "L04")))

# %% [markdown]
# ## What you have now
#
# - `adapter/`: a standard PEFT adapter with its tokenizer and chat template; `manifest.json`
#   records the config, package versions, data hash, timings and final losses.
# - `adapter/before_after.jsonl` and `style_check.json`: the first look at the voice
#   (`base_replies.jsonl` keeps the base model's side for the next Run all).
#
# **Success criterion met:** *Fine-tune with hyperparameters chosen for style* (and the
# second half of *tell style tuning apart from knowledge tuning*). **Skill updated:** the
# "Training configuration" section of `.claude/skills/persona-tuner/SKILL.md`, and the LoRA,
# QLoRA and training-arguments sections of `.claude/skills/llmops-fine-tuner/SKILL.md`.
#
# ## Exercises
#
# 1. Open `adapter/manifest.json`. How many tokens did training read, and how many of them
#    carried a loss? Why is the second number smaller?
# 2. Train with `LORA_R = 8` and then `32` (alpha follows). Does the signature rate change?
#    Does the share of trainable parameters in the first cell?
# 3. Set `EPOCHS = 6`. Watch the validation curve and the distinct-2 score. What happens?
# 4. Stop the training cell half-way (the stop button), then run it again. Which step does it
#    resume from, and does the loss curve continue where it stopped?
# 5. In a clone of the repository (on Colab: `!git clone https://github.com/persona-lab/persona-lab`,
#    then `%cd persona-lab`), run `python scripts/fine_tune_persona.py --help` and train
#    Captain Codebeard from `persona_data/captain_codebeard.jsonl` with the same settings,
#    from the command line.
