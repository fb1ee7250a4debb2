# %% [markdown]
# # Lesson 3 · Generating persona data
#
# **What you will build:** a batch of new TaskMaster conversations written by a teacher model,
# checked one by one as they arrive (valid structure, no generic assistant voice, no near-copies
# of the data you already have), then merged with the conversations you have (the shipped
# ones, or your own from lesson 2) into the training set lesson 4 fine-tunes on. You will see
# how a generation prompt is designed for a *voice*, what structured output buys you, and what a
# quality report of a batch says.
#
# **Time:** about 30 minutes of reading (an estimate); 200 examples through OpenAI take 2-3
# minutes and cost about six cents with `gpt-4o-mini`, twelve at most (`generate.estimate`,
# from the price table and the prompt sizes: no key has run it in CI). **Hardware:** no GPU
# needed. **Key:** with an OpenAI API key (in Colab: the key icon on the left, a secret named
# `OPENAI_API_KEY` with notebook access on) the
# notebook uses OpenAI. Without one it says so, writes a few examples through a local llama.cpp
# server running the small embedded model, and carries on with the data you already have: Run
# all took 18 s that way on a 2-core CPU (`bench/results/lessons_cpu.json`).
#
# **What it leaves behind** in `runs/taskmaster/data/`: `generated.jsonl` (the accepted
# conversations; `generated-local.jsonl` without a key) with its ledger, the spec it was
# written for (`generated.spec.json`) and `generated.report.json` (the quality report),
# `merged.jsonl` (the conversations lesson 4 adds to lesson 2's training split) and
# `batch_input.jsonl` (a Batch API file for large runs).

# %% install smollm2 judge

# %% parameters
SMOKE = False  # True: two tiny examples, whatever the endpoint; CI runs every notebook this way
PERSONA = ""  # empty: the persona you saved in lesson 1 (else TaskMaster); or a shipped slug or a YAML path
RUNS_ROOT = ""  # empty: Google Drive in Colab (survives a runtime reset), ./runs elsewhere
N_EXAMPLES = 200  # with an OpenAI key: the chapter's target of 200+ conversations
N_LOCAL = 3  # without a key: a handful through the local 135M model, to see the whole path work
OPENAI_MODEL = "gpt-4o-mini"  # cheap and good at JSON schemas; see generate.PRICES for others
SPEND_CAP_USD = 1.0  # the run stops launching requests before it would pass this
CONCURRENCY = 8  # requests in flight at once

# %%
import json
from pathlib import Path

from persona_lib import colab, dataset, generate, llm, plots, teacher
from persona_lib.spec import chapter_spec

runs_root = Path(RUNS_ROOT) if RUNS_ROOT else colab.drive_runs_root()
spec, run = chapter_spec(PERSONA, runs_root)  # lesson 1's spec, if you ran it; else the shipped one
data = run / "data"
existing, source = dataset.persona_conversations(spec.slug, run=run, required=False)  # shipped, or yours
print(f"run folder: {run}\nspec: {spec.name}; {len(existing)} conversations so far ({source})")

# %% [markdown]
# ## Designing a generation prompt for a voice
#
# Ask a model "write 200 TaskMaster conversations" and you get 200 variations of one
# conversation. Variety has to be planned. Each example here is one **item** of a plan:
#
# - a **topic** from the spec, in turn, so every topic gets its share;
# - a **user persona and situation**: *who* is asking and in what state. This is the idea behind
#   Persona Hub (Chan et al., 2024): conditioning each prompt on a different persona is the
#   cheapest source of diversity. A nurse manager and a bakery owner ask about deadlines
#   differently, and the voice has to hold for both;
# - a **turn count** (one to three user messages), so the model learns to stay in character
#   past the first reply;
# - two **signature phrases** to suggest, rotated across items so the batch covers the whole
#   vocabulary, with "once, if it fits" so no reply is stuffed with catchphrases.
#
# The plan is deterministic: item 17 of seed 0 is always the same request with the same id,
# which is what lets an interrupted run resume.

# %%
items = teacher.plan(spec, 8)
for it in items:
    print(f"{it.id}  {it.topic:<20} {it.turns} turn(s)  {it.profile}, who {it.situation}")

# %%
system, user = teacher.prompt_messages(spec, items[0])
print(system["content"])
print("\n---- the request for item 0 ----\n")
print(user["content"])

# %% [markdown]
# The system message gives the writer the *whole* spec: trait descriptions (the persona's own
# system prompt in lesson 1 left them out), the rules, and one example of the voice, rotated
# and marked "do not copy". The request says who the user is and how long the conversation is.
#
# ## Structured output
#
# The reply must parse into a training record every time, so the request carries a JSON
# schema: numbered turns, each a user message and a reply. OpenAI enforces it in *strict*
# mode (`response_format={"type": "json_schema", ...}`); the llama.cpp server compiles the
# same schema into a grammar but speaks another dialect (`{"type": "json_object", "schema":
# ...}`) and answers OpenAI's with HTTP 500. The client speaks both.

# %%
schema = teacher.conversation_schema(2)
print(json.dumps(schema, indent=1)[:700], "...")
print("OpenAI dialect:", llm.response_format(schema, "json_schema")["type"],
      "| llama.cpp dialect:", llm.response_format(schema, "json_object")["type"])

# %% [markdown]
# ## Generate
#
# Every reply goes through a gate before it is kept: parse (a broken JSON reply gets up to two
# re-asks), the dataset's record rules from lesson 2, a filter for the generic assistant voice
# ("As an AI language model", "I hope this helps"), a length cap, and near-duplicate search
# against the data you already have and everything kept so far. A kept record is appended to
# `generated.jsonl` the moment it arrives; rejected ones go to the ledger with their reason.
# Requests run eight at a time, with retries and backoff on rate limits and server errors.
#
# The estimate comes first, from a dated price table; the spend cap stops the run cleanly.
# **Interrupt it whenever you like:** running the cell again resumes where it stopped. Edit
# the persona in lesson 1 afterwards, and the next run notices (`generated.spec.json` records
# the spec the file was written for): the earlier conversations move to
# `generated.before-<digest>.jsonl`, kept but no longer trained on, and this one generates for
# the persona as it is now.

# %%
key = llm.openai_api_key()
if SMOKE or not key:
    config = generate.GenerateConfig.smoke(n=2 if SMOKE else N_LOCAL)
else:
    config = generate.GenerateConfig(n=N_EXAMPLES, concurrency=CONCURRENCY, spend_cap_usd=SPEND_CAP_USD)
print(f"{config.n} examples, up to {config.max_tokens} tokens each, {config.concurrency} in flight")

# %%
# The local model's records go to a file of their own: with a key added later, the rerun starts
# generated.jsonl afresh instead of resuming from (and training on) the 135M model's output.
output = data / ("generated.jsonl" if key else "generated-local.jsonl")
with llm.connect(OPENAI_MODEL) as endpoint:  # OpenAI with a key; else the local llama.cpp server
    result = generate.run(spec, endpoint, output, config, against=existing)
report = result.report
print(f"\n{report['accepted_total']} records in {output.name}; this run kept {report['accepted_this_run']}, "
      f"rejected {report['rejected_this_run']}, request failures {report['failed_this_run']}")
print(f"{report['requests']} requests, {sum(report['tokens'].values()):,} tokens, ${report['cost_usd']:.4f}")

# %% [markdown]
# ## Inspect the batch
#
# Read a few before trusting the numbers. Then the report: the acceptance rate and the
# reasons (a high `near_duplicate` share means the plan is not varied enough; `generic_voice`
# means the teacher slips out of the persona), and **vocabulary coverage**: how many of the
# signature phrases appear at all, and in what share of replies. Too low and the voice is
# faint; much higher than the shipped data and the model will learn to stuff catchphrases.

# %%
for record in result.records[:3]:
    print(f"[{record['id']}] {record['topic']} ({record['source']})")
    for m in record["messages"]:
        print(f"  {m['role']:>9}: {m['content'][:300]}")

# %%
vocab = report["vocabulary"]
existing_stats = dataset.dataset_stats(existing, signature_vocabulary={spec.slug: spec.signature_vocabulary})
existing_coverage = existing_stats["personas"][spec.slug]["signature_coverage"] if existing else None
print(f"acceptance {report['acceptance_rate']:.0%}, near-duplicate rate {report['near_duplicate_rate']:.0%}, "
      f"generic-voice rate {report['generic_rate']:.0%}, distinct-2 {report['distinct_2']:.2f}")
print(f"signature phrases used: {vocab['phrases_used']} of {vocab['phrases']}; "
      f"replies with one: {vocab['replies_with_a_phrase']:.0%}")
plots.generation_report_figure(report, baseline_coverage=existing_coverage, path=data / "generation_report.png")

# %% [markdown]
# ## Merge with the data you have
#
# The generated records were already deduplicated against the existing set at the gate, so the
# merge is a concatenation validated as a whole. Conversations from the local 135M model are a
# demonstration of the path, not training data: without a key the training set stays the
# conversations you already had (for a persona of your own with none yet, generate with a key).

# %%
keep = result.records if key else []
merged = generate.merge(existing, keep, data / "merged.jsonl")
stats = dataset.dataset_stats(merged)
print(f"merged.jsonl: {len(merged)} conversations ({len(existing)} existing + {len(keep)} generated), "
      f"{stats['multi_turn_share']:.0%} multi-turn, {len(stats['topics'])} topics")
if not key:
    print(f"No OpenAI key: training continues with {source}; the local model's {len(result.records)} "
          f"records stay in {output.name}. Set OPENAI_API_KEY and rerun to generate {N_EXAMPLES} with OpenAI.")

# %% [markdown]
# ## Large runs: the Batch API
#
# For thousands of examples, OpenAI's Batch API costs half as much and answers within 24
# hours. `write_batch_file` writes the same requests (the same plan, ids and schema) as a
# Batch input file; upload it with `client.files.create(file=..., purpose="batch")`, start it
# with `client.batches.create(input_file_id=..., endpoint="/v1/chat/completions",
# completion_window="24h")`, and pass the output file to `generate.read_batch_output`, which
# sends every answer through the same gate and ledger. Items already in `generated.jsonl` are
# left out, so a batch tops up an interactive run.

# %%
done = len(result.records) if key else 0  # the batch tops up OpenAI's records, never the local model's
batch_config = generate.GenerateConfig(n=done + 20)
batch_file = generate.write_batch_file(spec, OPENAI_MODEL, data / "batch_input.jsonl", batch_config,
                                       output=data / "generated.jsonl")
first = json.loads(batch_file.read_text().splitlines()[0])
print(f"{batch_file}: {len(batch_file.read_text().splitlines())} requests; the first is {first['custom_id']}")
print(generate.estimate(spec, batch_config, llm.Endpoint.compatible(llm.OPENAI_BASE_URL, OPENAI_MODEL),
                        against=existing, done=done, batch=True))

# %% [markdown]
# ## What a good result looks like
#
# Without a key, the local 135M teacher shows the path and why its output is not training data
# (`python bench/bench_generate_local.py`, `bench/results/generate_local.json`): 12 requests in
# 41 s on 2 cores, 7 kept and 5 rejected by the gate (3 too short, 2 with a placeholder left
# in), no near-duplicates, and kept records such as *"a freelance translator juggling three
# clients"* answered with *"you've got this! here's a JSON with key parameters..."*: the schema
# holds, the content does not. With a key, expect most requests kept (the gate's re-asks and
# retries recover malformed replies: against an injected 30% fault rate, 200 of 200 records
# were kept from 274 requests, `bench/results/generate.json`), a near-duplicate rate of a few
# percent, and most signature phrases in use.
#
# A run in trouble: an acceptance rate that keeps falling (read the rejection reasons), a
# near-duplicate share that climbs (the plan is not varied enough), or a spend estimate far
# above the cap.

# %% [markdown]
# ## Update your skill
#
# Your own persona-tuner skill (written in lesson 1, in `skill-first/` beside your run folders) has a
# placeholder for this lesson. The cell drafts the section from what you just measured; open
# the file and rewrite it in your words: what is clear, what is still confusing, what you would
# try next.

# %%
from persona_lib import skillfirst

print(skillfirst.fill(runs_root, "L03", skillfirst.draft(run, "L03")))

# %% [markdown]
# ## What you have now
#
# - `data/generated.jsonl`: accepted conversations, each with a deterministic id and its source
#   model; `generated.ledger.jsonl` says what happened to every item and what it cost. Without
#   a key these are `generated-local.*`, kept apart so that they never reach training.
# - `data/generated.report.json` and `generation_report.png`: the batch's quality report.
# - `data/merged.jsonl`: existing + generated, validated: lesson 4 trains on lesson 2's
#   training split plus the generated conversations in it.
#
# **Success criterion met:** *Create 200 or more persona-consistent training examples*.
# **Skill updated:** the "Dataset creation patterns" section of
# `.claude/skills/persona-tuner/SKILL.md` (plan the variety, schema-constrained output, a gate
# on every example, resume by id, measure coverage).
#
# ## Exercises
#
# 1. Run the generation cell, interrupt it halfway (the stop button), and run it again. Check
#    the ledger: which items were asked twice?
# 2. Generate 30 examples at `temperature=0.3` and 30 at `1.1` (`GenerateConfig(temperature=...)`,
#    a different output file each). Compare distinct-2, the near-duplicate rate and what you read.
# 3. Add three user personas of your own to `teacher.USER_PROFILES` that your real users
#    resemble. Which topics change most?
# 4. Lower `near_dup_threshold` to 0.5. How many more records are rejected, and were they really
#    duplicates? (`plots.duplicate_similarity_histogram` from lesson 2 helps.)
# 5. Point the notebook at Ollama or vLLM: `llm.Endpoint.compatible("http://localhost:11434/v1",
#    "llama3.2", kind="ollama")` and `generate.run(...)` with it.
