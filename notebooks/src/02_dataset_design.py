# %% [markdown]
# # Lesson 2 · Designing a persona dataset
#
# **What you will build:** a clean, split TaskMaster dataset: validated against the schema,
# described with statistics and figures, checked for near-duplicates, and cut into train,
# validation and test sets stratified by topic.
#
# **Time:** about 30 minutes of reading (an estimate); Run all took 10 s on a 2-core CPU
# (`python bench/bench_lessons.py`, `bench/results/lessons_cpu.json`). **Hardware:** any CPU; no
# GPU and no API key needed.
#
# **What it leaves behind** in your run folder: `data/train.jsonl`, `data/validation.jsonl`,
# `data/test.jsonl`, `data/train_openai.jsonl` (OpenAI fine-tuning format), `data/stats.json`
# and three figures. Lesson 4 trains on `data/train.jsonl`.

# %% install smollm2

# %% parameters
SMOKE = False  # True: CI's quick run (same data, the tiny model's tokenizer, which is the same one)
PERSONA = ""  # empty: the persona you saved in lesson 1 (else TaskMaster); or a shipped slug or a YAML path
DATA = ""  # your conversations as JSONL (this project's format, or just {"messages": [...]} per line);
          # empty: the shipped ones
MODEL = ""  # whose tokenizer measures lengths; empty: the embedded SmolLM2 (the tiny model shares it)
RUNS_ROOT = ""  # empty: Google Drive in Colab, ./runs elsewhere
MAX_TOKENS = 512  # the training sequence length of lesson 4: longer examples would be cut off
DEDUP_THRESHOLD = 0.7  # Jaccard similarity of word 3-gram sets above which two prompts count as one
SEED = 0  # the split is deterministic for a given seed

# %%
from pathlib import Path

from persona_lib import colab, dataset, dedup, io, models, plots
from persona_lib.spec import chapter_spec

runs_root = Path(RUNS_ROOT) if RUNS_ROOT else colab.drive_runs_root()
spec, run = chapter_spec(PERSONA, runs_root)
data_dir = run / "data"
tokenizer = models.load_tokenizer(MODEL or ("tiny" if SMOKE else "embedded"))
print(f"run folder: {run}")

# %% [markdown]
# ## Style data is not knowledge data
#
# Knowledge data teaches facts: many different questions, each answer carrying information
# the model lacks. Style data teaches a *way of answering*: the same voice across many
# situations the model already knows how to handle. That changes what "good data" means:
#
# - **Variety of situation, constancy of voice.** Different users, moods, lengths and topics;
#   one recognisable persona in every reply.
# - **Signature phrases in moderation.** If "you've got this" ends half the replies, the model
#   learns one sentence, not a personality. The shipped data keeps every phrase under 25%.
# - **No near-duplicates.** Repeated prompts weigh one situation several times over and leak
#   between train and test, so test scores flatter the model.
# - **Multi-turn conversations.** A persona has to survive the fifth turn, so a fifth of the
#   examples or more have several turns.
#
# ## The schema
#
# One JSON object per line: `persona` (the slug), `messages` in ChatML roles with no system
# message (the voice should live in the weights), a `topic` and a `source`.

# %%
records, source = dataset.persona_conversations(spec.slug, data=DATA, run=run)
if DATA:  # the later lessons read your conversations from the run folder
    io.write_jsonl(data_dir / dataset.YOURS, records)
example = records[0]
print(f"{len(records)} conversations from {source}; the first one:\n")
for m in example["messages"]:
    print(f"{m['role']:>9}: {m['content']}")

# %% [markdown]
# ## Validation reports every problem at once
#
# `check_records` lists problems without stopping (report mode); `load_records` raises one
# error that lists them all. Here are three broken records, as a data generator might write
# them:

# %%
broken = [
    {"id": "x1", "persona": "taskmaster", "topic": "focus", "messages": [{"role": "user", "content": "help"}]},
    {"id": "x2", "persona": "taskmastr", "topic": "focus",
     "messages": [{"role": "user", "content": "plan my day"}, {"role": "assistant", "content": "   "}]},
    {"id": "x3", "persona": "taskmaster", "topic": "focus", "mood": "tired",
     "messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "hi"}]},
]
for problem in dataset.check_records(broken, file="generated.jsonl", personas=["taskmaster"]):
    print(problem)

# %%
problems = dataset.check_records(records, file=f"{spec.slug}.jsonl", personas=[spec.slug],
                                 tokenizer=tokenizer, max_tokens=MAX_TOKENS)
print(f"shipped data: {len(problems)} problems at max_tokens={MAX_TOKENS}")

# %% [markdown]
# ## What the dataset holds
#
# Lengths are measured in the model's own tokens, through its chat template, because that
# is what training sees.

# %%
stats = dataset.dataset_stats(records, tokenizer=tokenizer,
                              signature_vocabulary={spec.slug: spec.signature_vocabulary})
persona_stats = stats["personas"][spec.slug]
print(f"conversations {stats['conversations']}, replies {stats['replies']}, "
      f"multi-turn share {stats['multi_turn_share']:.0%}")
print(f"tokens per example: median {stats['example_length']['p50']:.0f}, p95 {stats['example_length']['p95']:.0f}, "
      f"max {stats['example_length']['max']}")
replies = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
print(f"distinct-2 over replies: {dataset.distinct_n(replies, 2):.2f}")
print(f"generic-assistant phrasing: {persona_stats['generic_rate']:.1%} of replies")
for phrase, share in sorted(persona_stats["signature_coverage"].items(), key=lambda kv: -kv[1]):
    print(f"  {share:6.1%}  {phrase}")

# %%
plots.token_length_histogram(stats["example_lengths"], stats["assistant_lengths"], unit=stats["length_unit"],
                             max_tokens=MAX_TOKENS, path=data_dir / "token_lengths.png")

# %%
plots.topic_coverage_bar(stats["topics"], min_count=8, path=data_dir / "topic_coverage.png")

# %% [markdown]
# ## Near-duplicates
#
# Comparing every pair of prompts costs n² comparisons. `dedup` uses MinHash signatures and
# locality-sensitive hashing to find candidate pairs in near-linear time, then checks each
# candidate with the exact Jaccard similarity. The shipped data has none, so we plant two
# lightly edited copies, as a generator that repeats itself would, and watch them go.

# %%
long_prompts = [r for r in records if len(r["messages"][0]["content"].split()) >= 25][:2]
planted = [{**r, "id": f"planted-{i}",
            "messages": [{"role": "user", "content": r["messages"][0]["content"] + " Thanks in advance."},
                         *r["messages"][1:]]}
           for i, r in enumerate(long_prompts)]
kept, report = dedup.dedup(records + planted, threshold=DEDUP_THRESHOLD)
for d in report.dropped:
    print(f"dropped {d.id}: near-duplicate of {d.duplicate_of} (Jaccard {d.similarity:.2f})")
print(f"kept {len(kept)} of {len(records) + len(planted)}")

# %%
plots.duplicate_similarity_histogram(report.candidate_similarities, DEDUP_THRESHOLD,
                                     path=data_dir / "duplicates.png")

# %% [markdown]
# ## Split, stratified by topic
#
# First, about 15% of the conversations are set aside for lesson 5's persona classifier,
# which tells the three shipped voices apart: an adapter must never train on the replies its
# grader learned from. Which records are reserved depends only on their ids
# (`dataset.split_reserved`), so every lesson sets aside the same ones. A persona of your own
# keeps all its conversations: the classifier never learns it, so nothing needs hiding from it.
#
# The rest is split so that every topic lands in train, and validation and test take about
# a tenth each: the loss on validation (lesson 4) and the test scores cover the same topics.
# The split is deterministic: the same seed gives the same files.

# %%
clean = [r for r in kept if not r["id"].startswith("planted-")]
trainable, reserved = dataset.split_reserved(clean)
splits = dataset.split_records(trainable, seed=SEED)
io.write_jsonl(data_dir / "classifier_reserved.jsonl", reserved)
print(f"{'reserved':>10}: {len(reserved):4d} conversations, for the persona classifier only")
for name, part in splits.items():
    io.write_jsonl(data_dir / f"{name}.jsonl", part)
    print(f"{name:>10}: {len(part):4d} conversations, {len({r['topic'] for r in part})} topics")
dataset.to_openai_jsonl(splits["train"], data_dir / "train_openai.jsonl")
summary = {k: v for k, v in stats.items() if k not in ("example_lengths", "assistant_lengths")}
io.write_json(data_dir / "stats.json", {**summary, "dedup_dropped": [d.id for d in report.dropped],
                                         "reserved": len(reserved),
                                         "splits": {k: len(v) for k, v in splits.items()}, "seed": SEED})

# %% [markdown]
# ## What a good result looks like
#
# A full run of this notebook on the shipped TaskMaster file, with the embedded model's
# tokenizer (the numbers come from the file itself, and a test recomputes them): 241
# conversations with 329 replies, 37% multi-turn, 17 topics; tokens per example median 205,
# 95th percentile 373, longest 486, so nothing is cut at 512; distinct-2 over the replies 0.66;
# generic-assistant phrasing in 0.0% of replies; every signature phrase in 6 to 7% of replies,
# none dominating. The two planted copies are dropped and nothing else is. The split: 42
# reserved for the classifier, then 165 train, 17 validation, 17 test, every topic in train.
#
# A dataset in trouble looks different: problems listed by the validation cell, a 95th
# percentile near the sequence length (replies get cut mid-sentence), one phrase in a third of
# the replies (the model learns to stuff it), a topic bar far below the others, or a dedup
# cell that drops real records (raise DEDUP_THRESHOLD, and read the pairs it dropped).

# %% [markdown]
# ## Update your skill
#
# Your own persona-tuner skill (written in lesson 1, in `skill-first/` beside your run folders) has a
# placeholder for this lesson. The cell drafts the section from what you just measured; open
# the file and rewrite it in your words: what is clear, what is still confusing, what you would
# try next.

# %%
from persona_lib import skillfirst

print(skillfirst.fill(runs_root, "L02", skillfirst.draft(run, "L02")))

# %% [markdown]
# ## What you have now
#
# - `data/train.jsonl`, `data/validation.jsonl`, `data/test.jsonl`: TaskMaster, validated,
#   deduplicated, split by topic; `data/classifier_reserved.jsonl`: the classifier's slice.
#   `data/train_openai.jsonl` is the same training set in OpenAI's fine-tuning format.
# - `data/stats.json` and the three figures.
#
# **Success criterion met:** *Create 200 or more persona-consistent training examples* (with
# lesson 3, which shows how to generate more). **Skill updated:** the "Dataset creation
# patterns" section of `.claude/skills/persona-tuner/SKILL.md`.
#
# ## Exercises
#
# 1. Lower `DEDUP_THRESHOLD` to 0.4 and re-run. What gets dropped now, and are those pairs
#    really the same situation?
# 2. Which signature phrase is most frequent? Write three replies that carry the voice
#    without any signature phrase at all.
# 3. Set `MAX_TOKENS = 128`. How many examples fail, and what would training do to them?
# 4. Find the smallest topic in the coverage figure and write two more conversations for it,
#    in a different situation than the existing ones; validate them with `check_records`.
