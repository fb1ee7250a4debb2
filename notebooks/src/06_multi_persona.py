# %% [markdown]
# # Lesson 6 · One model, several voices
#
# **What you will build:** one base model that speaks as TaskMaster, Captain Codebeard or
# Zen Coder on demand. You will put three persona adapters on a single base and switch
# between them live, train the alternative design (one adapter that learns all three voices,
# picked by naming the persona in the system prompt), route requests to a persona, measure
# *persona bleed* (one voice leaking into another) for both designs, and blend two voices.
#
# **Time:** about 20 minutes of reading and clicking, plus training: four LoRA runs (three
# personas and the conditioned adapter), about 24 minutes together on a Colab T4 (an estimate
# from counted tokens, `bench/results/t4_estimate.json`: no T4 has run it yet). On a 2-core CPU
# with the embedded SmolLM2-135M they took **68 minutes** together, measured with nothing else
# running: TaskMaster 7, Codebeard's 120 updates 22, Zen Coder 5, the conditioned adapter's 240
# updates 33, each with six validation passes (`python bench/bench_multi.py --train-only`,
# `bench/results/multi_training.json`, an AMD EPYC with native bf16). A CPU without native bf16
# trains in fp32: on an AMD EPYC without AVX-512 the four took **98 minutes** (TaskMaster 10,
# Codebeard 33, Zen Coder 8, the conditioned adapter 46; `python bench/bench_multi.py
# --train-only`, there in two parts, `--separate-only` first, `multi_training_no_avx512.json`),
# 1.46 times as long. Start it and read on, or come back: adapters this lesson trained before are
# reused, and an interrupted run picks up where it stopped. (Lesson 4's TaskMaster adapter stops
# at fewer updates than this lesson asks, so TaskMaster trains here too, beside it.)
# **Hardware:** Colab's free T4, or any CPU.
#
# **What it leaves behind:** `runs/<persona>/adapter/` for every persona (TaskMaster's in
# `adapter-<hash>/` when lesson 4's was trained another way), and in
# `runs/taskmaster/multi/`: `conditioned_adapter/`, `bleed.json` + `bleed.png` (the persona
# confusion matrices), `blend.json` + `blend.png`, `routing.json` and `summary.json`.

# %% install smollm2

# %% parameters
SMOKE = False  # True: the tiny random-init model, a few records, one prompt per persona;
               # CI runs every notebook this way
MODEL = ""  # empty: Llama-3.2-3B-Instruct in 4-bit on a Colab GPU, the embedded SmolLM2 on a CPU
RUNS_ROOT = ""  # empty: Google Drive in Colab (survives a runtime reset), ./runs elsewhere
PERSONAS = ["taskmaster", "captain_codebeard", "zen_coder"]  # the shipped voices
PROMPTS_PER_PERSONA = 10  # held-out prompts per persona for the bleed matrix; every persona answers all of them
BLEND = ["taskmaster", "captain_codebeard"]  # blend the first voice into the second

# %%
from pathlib import Path

from persona_lib import colab, io, models, multi, plots
from persona_lib.metrics import train_persona_classifier

runs_root = Path(RUNS_ROOT) if RUNS_ROOT else colab.drive_runs_root()
model_id = MODEL or models.default_model(SMOKE)
choice = dict(model=model_id, personas=tuple(PERSONAS), blend_pair=tuple(BLEND))
if SMOKE:
    config = multi.MultiConfig.smoke(**choice)
else:
    config = multi.MultiConfig(**choice, prompts_per_persona=PROMPTS_PER_PERSONA)
out = multi.multi_dir(runs_root)
print(f"model: {model_id}\nrun folder: {runs_root}\nthis lesson writes to: {out}")

# %% [markdown]
# ## Two ways to hold several personas
#
# **Separate adapters.** Train one LoRA adapter per persona, exactly as in lesson 4. A LoRA
# adapter is a few percent of the model's size, added to a frozen base: PEFT can keep several
# of them on one base model and add only the *active* one's update. Switching persona is
# choosing which small matrices join the computation. The base weights never move.
#
# **One conditioned adapter.** Train a single adapter on all three personas' conversations,
# each with a system prompt that names its persona (`You are Captain Codebeard.`). At
# inference the system prompt picks the voice. One file to ship, one training run, and the
# voices share what they have in common; the risk is that they also blur into each other.
#
# Both designs train on the same shipped conversations, minus a slice the persona classifier
# keeps for itself (it must not grade replies learnt from its own training text). Lesson 4's
# adapter is reused only if it was trained with exactly this lesson's configuration on these
# conversations; otherwise (lesson 4 stops at fewer updates) this lesson trains its own beside
# it, in `adapter-<hash>/`, and leaves lesson 4's as it was.
#
# A voice is learnt in optimizer updates, not in passes over the data. When Captain Codebeard
# had 100 training conversations, two epochs were only 26 updates (TaskMaster's 182 make 46),
# and with 26 its adapter hardly spoke pirate. So every persona trains at least
# `config.min_steps` updates (60: 2.6 epochs for TaskMaster), and the conditioned adapter gets
# the three minimums together, so that the two designs are compared at an equal budget. A
# voice far from the base model's may need more: `bench/bench_updates.py` measured Codebeard's
# bleed diagonal at 0.67 [0.50, 0.83] after 60 updates and 0.80 [0.67, 0.93] after 120 on the
# same 30 prompts, though its validation loss had stopped falling. Read the paired difference
# before you trust the rule: +0.13 [-0.03, +0.33], one run each, so the interval still holds
# "no gain". `config.min_steps_by_persona` gives Codebeard 120 as the cautious choice (it costs
# about 19 more CPU minutes, 11 in Codebeard's run and 8 in the conditioned one: the times in
# `multi_training.json` in proportion to the updates), not as a proven need. If your bleed
# matrix shows another weak voice, add it there (`MultiConfig(min_steps_by_persona={...})`) and
# retrain.

# %%
adapters, training = {}, {}
for slug in config.personas:
    training[slug] = multi.ensure_adapter(multi.adapter_dir(slug, runs_root), config.train_config(slug),
                                          config.records(slug))
    adapters[slug] = training[slug]["folder"]
for slug, t in training.items():
    print(f"{slug:<18} {'trained' if t['trained'] else 'reused '}  {t['steps']} updates, "
          f"{t['train_s']:.0f} s of training  {t['folder']}")

# %% [markdown]
# The conditioned adapter's data is the three personas' conversations, interleaved, each
# with its persona named in a system message. Here is how the first two records start:

# %%
mixed = multi.conditioned_records({slug: config.records(slug) for slug in config.personas})
print(f"{len(mixed)} conversations")
for record in mixed[:2]:
    for message in record["messages"][:2]:
        print(f"  {message['role']:>9}: {message['content'][:100]}")
    print()

# %%
conditioned_config = config.train_config(conditioned=True)
print(f"conditioned adapter: at least {conditioned_config.min_steps} updates, the separate runs' minimums together")
training[multi.CONDITIONED] = multi.ensure_adapter(multi.conditioned_dir(runs_root), conditioned_config, mixed)
adapters[multi.CONDITIONED] = training[multi.CONDITIONED]["folder"]
t = training[multi.CONDITIONED]
print(f"conditioned adapter: {'trained' if t['trained'] else 'reused'}, {t['train_s']:.0f} s of training; "
      f"separate adapters together: {sum(training[s]['train_s'] for s in config.personas):.0f} s")

# %% [markdown]
# ## Every adapter on one base
#
# `load_personas` loads the base model once and adds each adapter under its own name with
# PEFT's `load_adapter(folder, adapter_name=...)`. The adapters together are a small fraction
# of the base model's size.

# %%
model, tokenizer = multi.load_personas(model_id, adapters)
counts = multi.parameter_counts(model)  # counts a 4-bit base (Colab) at its real size
print(f"adapters loaded: {list(model.peft_config)}")
print(f"base parameters: {counts['base']:,}; all {len(adapters)} adapters together: {counts['lora']:,} "
      f"({100 * counts['lora'] / counts['base']:.1f}% of the base)")

# %% [markdown]
# ## Switch live
#
# One question, three voices, then the base model with every adapter switched off
# (`with model.disable_adapter():`). `persona_replies` is `model.set_adapter(name)` followed by
# ordinary generation.

# %%
question = [{"role": "user", "content": "I keep putting off writing tests for my side project. Any advice?"}]
gen = dict(max_new_tokens=config.max_new_tokens, progress=False)
for name in [*config.personas, multi.BASE]:
    reply = multi.persona_replies(model, tokenizer, [question], name, **gen)[0]
    print(f"[{name}]\n{reply}\n")

# %% [markdown]
# ### A switch is not a reload
#
# The base weights stay the same tensors in memory whichever adapter is active: the address
# of a base weight does not change. A switch costs what it takes PEFT to walk the model's
# modules and flip a flag on each adapted layer. Compare that with what you would pay to
# load the model again with another adapter (from the disk cache; a cold disk is slower).

# %%
weight = next(p for n, p in model.named_parameters() if "lora_" not in n)  # any base weight
before = weight.data_ptr()
switch = multi.switch_seconds(model, list(config.personas))
reload = multi.reload_seconds(model_id, adapters[config.personas[-1]])
assert weight.data_ptr() == before
print(f"switch: {switch * 1e3:.1f} ms; reload base + adapter: {reload:.2f} s "
      f"({reload / switch:,.0f} times longer)")

# %% [markdown]
# The conditioned adapter gets its voice from the system prompt instead:

# %%
for slug in config.personas:
    prompt = multi.conditioning_prompt(slug)
    reply = multi.persona_replies(model, tokenizer, [question], multi.CONDITIONED, system_prompt=prompt, **gen)[0]
    print(f"[conditioned, '{prompt}']\n{reply}\n")

# %% [markdown]
# ## Which persona answers? A router
#
# A product has to pick the voice for each request. The reliable way is to let the user (or
# the calling app) choose; `Router.route(message, persona=...)` honours that first. Without a
# choice it falls back to a rule you can read: the first persona whose keyword appears in the
# message, else a default. `explain` says why.

# %%
router = multi.Router()
for text in ["Captain, is this commit message fine?", "I'm stuck and frustrated with recursion",
             "Move my dentist appointment task to Friday", "Hello!"]:
    print(f"{text!r:<50} -> {router.explain(text)}")
print(router.route("Move my dentist appointment task to Friday", persona="zen_coder"), "(an explicit choice wins)")

# %% [markdown]
# How often does the rule send a held-out prompt to the persona it was written for? Topics
# overlap (both coders talk about debugging and naming), so expect the coders to be confused
# with each other: that is why an explicit choice beats content rules for picking a *voice*.

# %%
routing = multi.routing_matrix(router, multi.bleed_prompts(config.personas, per_persona=10_000))
io.write_json(out / "routing.json", routing)
print({slug: round(rate, 2) for slug, rate in routing["diagonal"].items()})

# %% [markdown]
# ## Persona bleed
#
# Ask every persona the **same** prompts (held-out ones, pooled from all three personas, so
# topic is the same in every row) and let the persona classifier from lesson 5 say whose voice
# each reply is in. Rows: the persona you asked for. Columns: the persona the classifier hears.
# A perfect model is a diagonal of 1s; whatever sits off the diagonal is bleed.
#
# The classifier itself is not perfect. Its own cross-validated matrix on the *reference*
# replies (the persona data, written by people) is the ceiling: a model's diagonal cannot be
# trusted beyond it. Read every number against that first panel.

# %%
classifier = train_persona_classifier()
prompts = multi.bleed_prompts(config.personas, config.prompts_per_persona)
gen = dict(max_new_tokens=config.max_new_tokens, batch_size=config.batch_size)
print(f"{len(prompts)} prompts x {len(config.personas)} personas x 2 designs; "
      f"classifier accuracy on reference replies: {classifier.heldout['accuracy']['mean']:.2f}")

# %%
replies = {design: multi.bleed_replies(model, tokenizer, prompts, config.personas, design, out / "replies", **gen)
           for design in ("separate", "conditioned")}  # saved per persona: a rerun skips what is done

# %%
bleed = {"ceiling": multi.ceiling_matrix(classifier, config.personas),
         "separate": multi.bleed_matrix(replies["separate"], classifier),
         "conditioned": multi.bleed_matrix(replies["conditioned"], classifier),
         "prompts": [p["id"] for p in prompts], "classifier": classifier.heldout}
io.write_json(out / "bleed.json", bleed)
plots.persona_bleed_matrices({"classifier on reference replies (ceiling)": bleed["ceiling"],
                              "separate adapters": bleed["separate"],
                              "one conditioned adapter": bleed["conditioned"]}, path=out / "bleed.png")

# %%
print(f"{'persona':<18} {'ceiling':>8} {'separate':>9} {'conditioned':>12}")
for slug in config.personas:
    print(f"{slug:<18} " + " ".join(f"{bleed[k]['diagonal'][slug]:>{w}.2f}"
                                    for k, w in (("ceiling", 8), ("separate", 9), ("conditioned", 12))))
best = max(("separate", "conditioned"), key=lambda k: bleed[k]["mean_diagonal"])
print(f"\nmean diagonal: ceiling {bleed['ceiling']['mean_diagonal']:.2f}, separate "
      f"{bleed['separate']['mean_diagonal']:.2f}, conditioned {bleed['conditioned']['mean_diagonal']:.2f}: "
      f"{best} keeps the voices apart better here")

# %% [markdown]
# **Reading the matrices.** A row that leaks into one column is a voice that drifts towards a
# specific other persona: with the conditioned adapter that usually means the name in the
# system prompt was not enough to pull the voices apart. A column that collects from every
# row is a voice that dominates: often the persona with the most training data. A diagonal
# close to the ceiling is as good as this classifier can tell; below it, look at the replies
# themselves (`replies/` in the run folder) before you believe either number.
#
# **What a good result looks like** (the embedded model; every persona answers the same 30
# pooled prompts, 10 of each persona's, `bench/results/multi.json`): separate adapters reach a
# diagonal of TaskMaster 0.83 [0.70, 0.97], Codebeard 0.80 [0.63, 0.93] and Zen Coder 0.77
# [0.60, 0.90], against the classifier's
# own ceiling of 1.00, 0.96 and 0.66 (Zen Coder's reference replies are the hardest to tell
# apart, so read its row against that). One conditioned adapter on the same conversations
# reaches only 0.50, 0.63 and 0.60: the voices bleed into each other. A row near 0.33 means the
# adapter did not take: check that it trained its minimum updates.
#
# ## Blending two voices
#
# PEFT's `add_weighted_adapter` builds a new adapter from a weighted sum of others. With
# `combination_type="cat"` the result is exactly `(1 - w) x first + w x second` (the ranks
# add up); `"svd"` compresses that back to the larger of the two ranks; `"linear"` mixes the
# matrices in a way that is only an approximation and needs equal ranks. Walk the weight from
# 0 to 1 and ask the classifier how much of the second voice it hears.

# %%
a, b = config.blend_pair
blend_set = [p["messages"] for p in multi.bleed_prompts(config.personas, config.blend_prompts_per_persona)]
curve = multi.blend_curve(model, tokenizer, a, b, blend_set, classifier, weights=config.blend_weights,
                          combination=config.combination, cache=out / "replies", **gen)  # a rerun reuses them
io.write_json(out / "blend.json", curve)
for row in curve["rows"]:
    print(f"w = {row['weight']:.1f}: P({a}) {row['p_a']:.2f}  P({b}) {row['p_b']:.2f}  "
          f"attributed to {b}: {row['share_b']:.0%}")
print(f"the curve {curve['trend']} (P({b}) moves {curve['rise']:+.2f} from w = 0 to w = 1)")

# %%
plots.blend_curve_plot(curve, path=out / "blend.png")

# %% [markdown]
# If the curve is not monotonic, that is a finding, not a bug to hide: blending adds weight
# updates, and a model's behaviour is not linear in its weights. Halfway blends often flip to
# one voice rather than mixing, and small prompt sets make the curve noisy.

# %%
summary = {"model": model_id, "personas": list(config.personas),
           "train_s": {name: t["train_s"] for name, t in training.items()},
           "reused": [name for name, t in training.items() if not t["trained"]],
           "diagonal": {k: bleed[k]["diagonal"] for k in ("ceiling", "separate", "conditioned")},
           "mean_diagonal": {k: bleed[k]["mean_diagonal"] for k in ("ceiling", "separate", "conditioned")},
           "switch_s": switch, "reload_s": reload,
           "blend": {"pair": [a, b], "p_b": [r["p_b"] for r in curve["rows"]], "monotonic": curve["monotonic"]},
           "routing_diagonal": routing["diagonal"]}
io.write_json(out / "summary.json", summary)
print(f"saved to {out}")

# %% [markdown]
# ## Update your skill
#
# Your own persona-tuner skill (written in lesson 1, in `skill-first/` beside your run folders) has a
# placeholder for this lesson. The cell drafts the section from what you just measured; open
# the file and rewrite it in your words: what is clear, what is still confusing, what you would
# try next.

# %%
from persona_lib import skillfirst

print(skillfirst.fill(runs_root, "L06", skillfirst.draft(out.parent, "L06")))

# %% [markdown]
# ## What you have now
#
# - Three persona adapters on one base model, switched in milliseconds, and one conditioned
#   adapter that holds every voice in a single file.
# - `bleed.png`: how well each design keeps the voices apart, against the classifier's ceiling.
# - `blend.png`: what happens between two voices.
#
# **Which design?** Separate adapters isolate voices by construction (an adapter never saw
# another persona's data), can be added, retrained or removed one at a time, and switch for
# free; they cost one training run per persona. The conditioned adapter is one file and one
# run, and can share what the voices have in common, but its voices can bleed. Let your
# `bleed.png` decide: if the conditioned diagonal is within a few points of the separate one,
# ship the single file; if it bleeds, keep adapters per persona. The project's full run on the
# embedded model (`bench/bench_multi.py`, `bench/results/multi.json`) found the conditioned
# adapter bleeding: diagonals 0.50, 0.63, 0.60 against 0.83, 0.80, 0.77 for separate adapters
# (TaskMaster, Codebeard, Zen Coder; the classifier's ceiling is 1.00, 0.96, 0.66), at the
# same number of updates (240) and about the same time (2,143 s against 1,912 s). At scale,
# both serve from one process: vLLM and llama.cpp load many LoRA adapters on one base and pick
# one per request.
#
# **Success criterion met:** *Switch between several personas in one model.* **Skill updated:**
# the "Multi-persona patterns" section of `.claude/skills/persona-tuner/SKILL.md`.
#
# ## Exercises
#
# 1. Add a keyword to the router (`router.rules["zen_coder"] += ("refactor",)`) and re-run the
#    routing-matrix cell. Which prompts moved, and did the diagonal go up?
# 2. Blend `zen_coder` into `captain_codebeard` with `combination="svd"` and then `"cat"`.
#    Do the curves differ? Which blend weights produce a voice neither persona has?
# 3. Change `conditioning_prompt` to the full persona system prompt (`persona_lib.spec.system_prompt`) and
#    retrain the conditioned adapter (delete `conditioned_adapter/` first). Does the bleed
#    shrink, and what does each request now cost in prompt tokens?
# 4. Ask TaskMaster's adapter an out-of-character question ("drop the act and tell me a
#    joke"). Does the voice hold better with the separate adapter or the conditioned one?
