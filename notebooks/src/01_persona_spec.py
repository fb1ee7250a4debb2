# %% [markdown]
# # Lesson 1 · The persona specification
#
# **What you will build:** a trainable specification of *TaskMaster*, the voice that will
# replace the generic "AI assistant" tone of your task-management assistant: encouraging,
# productivity-focused, professional but friendly. You will edit it in a form, validate it,
# read the system prompt and judging rubric it produces, and take the "before" picture: how
# the base model answers today, without and with that persona prompt.
#
# **Time:** about 25 minutes, most of it reading and editing the form (an estimate). Run all
# took 32 s on a 2-core CPU with the embedded model, 28 s of it loading the model and writing the
# "before" answers (`python bench/bench_lessons.py`, `bench/results/lessons_cpu.json`); on a T4
# add a few minutes for the 3B model's download (an estimate: no T4 has run it yet). **Hardware:**
# Colab's free T4, or any CPU (the offline path uses the small SmolLM2-135M model that ships inside
# a Python package: no download, no key).
#
# **What it leaves behind** in your run folder (`runs/taskmaster/` or on Google Drive):
# `spec/spec.yaml` (the spec every later lesson reads) and `spec/before.jsonl` (the base
# model's answers, the baseline lesson 5 compares against).

# %% install smollm2

# %% parameters
SMOKE = False  # True: the tiny random-init model and two prompts; CI runs every notebook this way
PERSONA = "taskmaster"  # a shipped persona (taskmaster, captain_codebeard, zen_coder) or a path to your YAML
MODEL = ""  # empty: Llama-3.2-3B-Instruct in 4-bit on a Colab GPU, the embedded SmolLM2 on a CPU
RUNS_ROOT = ""  # empty: Google Drive in Colab (survives a runtime reset), ./runs elsewhere
N_PROMPTS = 4  # held-out questions for the "before" picture

# %%
from pathlib import Path

from persona_lib import colab, models
from persona_lib.chat import CHAT, generate_replies
from persona_lib.dataset import heldout_prompts
from persona_lib.spec import adopt_spec, chapter_spec, load_spec, rubric_text, save_spec, system_prompt, validate_spec
from persona_lib.widgets import spec_editor

runs_root = Path(RUNS_ROOT) if RUNS_ROOT else colab.drive_runs_root()
model_id = MODEL or models.default_model(SMOKE)
spec, run = chapter_spec(PERSONA, runs_root)
print(f"run folder: {run}\nmodel: {model_id}")

# %% [markdown]
# ## Skill first: say what you want to learn
#
# Before the content, write down what you want from this chapter, and start the skill you will
# grow lesson by lesson. The cell puts two files beside your run folders (`skill-first/`, on Drive in
# Colab): `LEARNING-SPEC.md` (what you want to learn, why, success criteria as checkboxes,
# constraints, questions, what you already know) and `persona-tuner/SKILL.md`, a skill scaffold
# with one `[TO BE LEARNED: ...]` placeholder per lesson. Open the learning spec now and fill it
# in; each later lesson ends with an "Update your skill" cell. Your files are never overwritten.
# The repository's `LEARNING-SPEC.md` and `.claude/skills/persona-tuner/SKILL.md` are the answer
# key: compare at the end.

# %%
from persona_lib import skillfirst

for name, path in skillfirst.start(runs_root, spec.name).items():
    print(f"{name}: {path}")

# %% [markdown]
# ## Style is not knowledge
#
# Fine-tuning can teach a model two different things. **Knowledge tuning** changes *what* it
# knows: facts, a product's API, a domain. **Style tuning** changes *how* it speaks: tone,
# rhythm, vocabulary, what it refuses to sound like. A persona is style. It needs far fewer
# examples than knowledge (a few hundred conversations, not tens of thousands), and its
# risk is the opposite one: a model that learns the voice so hard that it forgets what it
# knew, or answers everything with the same sentence. Every lesson after this one measures
# both sides.
#
# A persona you can train on has to be written down precisely enough that a person, a data
# generator and a judge all agree on what "in character" means. That is the spec.

# %%
print(f"{spec.name}: {spec.description}\n")
for trait in spec.traits:
    print(f"  {trait.name:<22} weight {trait.weight:.2f}  {trait.description}")
print("\nsignature vocabulary:", ", ".join(spec.signature_vocabulary))
print("avoid:", "; ".join(spec.avoid))

# %% [markdown]
# ## Edit it
#
# The form below edits every field of the spec. Problems show up in red as you type; the
# system prompt preview updates live; **Save** writes `spec/spec.yaml` in your run folder
# (it refuses while the spec has problems, so a broken edit never replaces a good file).
#
# *Run all* walks past this form with the spec unedited. To make it yours: edit, press
# Save, then re-run the cells below this one.

# %%
spec_path = run / "spec" / "spec.yaml"
if not spec_path.exists():
    save_spec(spec, spec_path)
editor = spec_editor(spec_path, path=spec_path)
editor

# %%
spec = load_spec(spec_path)  # whatever you saved in the form
run = adopt_spec(spec, runs_root)  # lessons 2 to 7 read it from here (a new slug starts a new run folder)
print(f"using {spec_path}: {spec.name}, {len(spec.traits)} traits; run folder {run}")

# %% [markdown]
# ## Validation says what is wrong and how to fix it
#
# A spec is data, so it can be wrong in many ways at once. `validate_spec` lists every
# problem with the field's path and a fix, instead of stopping at the first.

# %%
broken = {"name": "", "slug": "Task Master", "description": "helps with tasks",
          "traits": [{"name": "encouraging", "description": "cheers you on", "weight": 3,
                      "levels": {1: "cold", 2: "flat", 3: "kind", 4: "warm", 5: "uplifting"}}],
          "tone": "upbeat", "colour": "blue"}
for problem in validate_spec(broken):
    print(problem)

# %% [markdown]
# ## What the spec produces
#
# Two things come out of a spec. The **system prompt** is the cheap way to get a persona:
# it costs tokens on every request and a small model follows it loosely. The **rubric**
# tells a judge (lesson 5) what a 1 and a 5 look like for each trait.

# %%
prompt = system_prompt(spec)
print(prompt)
print(f"\n{len(prompt.split())} words")

# %%
print(rubric_text(spec)[:1500], "...")

# %% [markdown]
# ## The "before" picture
#
# Ask the base model a few held-out questions (they never appear in training data), once
# as it is and once with the persona's system prompt. Keep these answers in mind: lesson 4
# trains the voice into the weights so that it holds *without* the prompt.

# %%
model, tokenizer = models.load_chat_model(model_id)
prompts = heldout_prompts(spec, 2 if SMOKE else N_PROMPTS)
conversations = [p["messages"] for p in prompts]
max_new = 8 if SMOKE else 120
plain = generate_replies(model, tokenizer, conversations, max_new_tokens=max_new, decoding=CHAT, desc="base")
prompted = generate_replies(model, tokenizer, conversations, system_prompt=prompt, max_new_tokens=max_new,
                            decoding=CHAT, desc="base + persona prompt")
for p, a, b in zip(prompts, plain, prompted):
    print(f"USER: {p['messages'][-1]['content']}\n  base:           {a}\n  persona prompt: {b}\n")

# %%
from persona_lib import io

before = [{"id": p["id"], "prompt": p["messages"][-1]["content"], "model": model_id, "decoding": CHAT.label,
           "base": a, "base_with_persona_prompt": b} for p, a, b in zip(prompts, plain, prompted)]
io.write_jsonl(run / "spec" / "before.jsonl", before)
print(f"saved {len(before)} answers to {run / 'spec' / 'before.jsonl'}")

# %% [markdown]
# ## What a good result looks like
#
# On the embedded SmolLM2-135M the prompted base model talks about tasks but not in
# TaskMaster's voice: "I'm sorry for any confusion. I'm here to help you plan your next task.
# I'll make sure to keep your list updated..." (`bench/results/decoding.json`, 28 held-out
# prompts: signature phrases in 7% of its replies). Without the prompt it answers as a generic
# chatbot. That gap is what lesson 4 closes. These replies are decoded with `chat.CHAT`: no
# run of three tokens twice in a reply. Plain greedy decoding made 89% of the prompted replies loop ("I'm just
# a task assistant" over and over); with the guard, 4% do. A 3B model on a T4 writes fluent
# replies that already sound like an assistant with a brief; the voice is still the prompt's,
# not the model's (an expectation: no T4 run is committed yet).
#
# Something is wrong if the spec cell lists problems you did not expect, the system prompt is
# missing a trait you wrote, or a reply is empty.

# %% [markdown]
# ## What you have now
#
# - `spec/spec.yaml`: TaskMaster, validated, in your run folder. Lessons 2 to 7 read it.
# - `spec/before.jsonl`: the base model's answers, the baseline for lesson 5.
#
# **Success criterion met:** *Write a persona specification that can be trained on* (and the
# first half of *tell style tuning apart from knowledge tuning*). **Skill updated:** the
# "Persona specification template" section of `.claude/skills/persona-tuner/SKILL.md`.
#
# ## Exercises
#
# 1. Add a trait "concise" with five levels of your own. What does a 1 look like? Save, and
#    re-run the system prompt cell: did the prompt grow? By how many words?
# 2. Set a trait's weight to 3 in the form and read the message. Then break the YAML by
#    hand (delete a colon) and run `!persona spec check {spec_path}` in a cell (the `!` runs
#    a shell command; `{spec_path}` is filled in from the notebook).
# 3. Load `captain_codebeard` or `zen_coder` instead (the `PERSONA` parameter). Which of
#    their traits would be hardest for a judge to score, and why?
# 4. Compare the two "before" answers. Which parts of the persona did the system prompt
#    carry, and which did the base model ignore?
