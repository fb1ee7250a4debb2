# %% [markdown]
# # Lesson 7 · Capstone: TaskMaster as a local model
#
# **What you will build:** TaskMaster, from the LoRA adapter of lesson 4 to a single GGUF file
# that runs on a laptop. You will merge the adapter into its base model, convert the result
# with llama.cpp's own converter, quantize it to 4 and 8 bits, check what the quantizer really
# wrote, chat with it in llama.cpp, put all three personas as small adapters over one base,
# measure whether the voice survived the export, serve it behind an OpenAI-compatible API,
# and write the Ollama Modelfile you will use at home.
#
# **Time:** about 15 minutes on a CPU with the embedded SmolLM2-135M, most of it reading: Run
# all took 68 s on the project's 2-core box after lessons 1-5 (`python bench/bench_lessons.py`,
# `bench/results/lessons_cpu.json`; without lesson 6's adapters only TaskMaster's LoRA is
# converted in section 5), the merge, f16 conversion and two quantizations 27 s of
# it (`bench/results/export.json`). On Colab with the 3B model, 20-35 minutes and ~25 GB of disk:
# an estimate (no T4 has run it yet), of which converting and quantizing 6 GB of weights on
# the runtime's 2 vCPUs is about 6 minutes scaled from those measurements
# (`bench/results/t4_estimate.json`), the rest the merge, the model download and the checks.
# Add about 10 minutes, once per runtime, when no prebuilt llama-cpp-python wheel matches the
# runtime: the install cell then builds llama.cpp from source and says so (276 s on the
# project's 2-core box, `bench/results/llama_build.json`; Colab's figure is an estimate).
# Run all again on the same runtime redoes nothing that is current: 27 s on the 2-core box
# (`bench/results/lessons_again_no_avx512.json`).
# **Hardware:** any CPU, or Colab's free T4 (the merge runs on the GPU there; converting and
# quantizing run on the CPU either way).
#
# **What it leaves behind** in `runs/taskmaster/export/`: `merged/` (a normal Hugging Face
# model folder), `taskmaster.f16.gguf`, `taskmaster.Q4_K_M.gguf`, `taskmaster.Q8_0.gguf`,
# `base.f16.gguf` with one `<persona>.lora.gguf` per persona, `Modelfile` and
# `Modelfile.adapter`, `tensor_types.png`, `parity.json` + `parity.jsonl` (export parity) and
# `summary.json`. On Colab the large files are made on the runtime's local disk
# (`/content/persona-lab/export/<run name>/`; Drive's free 15 GB cannot hold a 3B export),
# and only what you keep (the Q4_K_M file, the persona LoRAs, the Modelfiles and the reports)
# is copied to your run folder on Drive at the end; a rerun copies only the files that changed.

# %% install smollm2 llama

# %% parameters
SMOKE = False  # True: the tiny random-init model, 2 parity prompts, 8-token replies; CI runs this
PERSONA = ""  # empty: the persona you saved in lesson 1 (else TaskMaster); its adapter is <run folder>/adapter
MODEL = ""  # the base model; empty: Llama-3.2-3B-Instruct on a Colab GPU, the embedded SmolLM2 on a CPU
RUNS_ROOT = ""  # empty: Google Drive in Colab (survives a runtime reset), ./runs elsewhere
QUANTS = ["Q4_K_M", "Q8_0"]  # the first one is the file you ship; Q8_0 is the near-lossless reference
PARITY_PROMPTS = 8  # held-out prompts for export parity (the benchmark uses 40+)
HUB_REPO = ""  # e.g. "your-name/taskmaster-gguf": upload the GGUF and Modelfile there (needs HF_TOKEN)
EXPORT_DIR = ""  # empty: <run folder>/export, or on Colab the local disk (a 3B export needs ~25 GB)

# %%
from pathlib import Path

from persona_lib import (
    adapters,
    colab,
    export,
    io,
    llama_runtime,
    models,
    multi,
    ollama,
    plots,
)
from persona_lib.spec import chapter_spec

runs_root = Path(RUNS_ROOT) if RUNS_ROOT else colab.drive_runs_root()
model_id = MODEL or models.default_model(SMOKE)
spec, run = chapter_spec(PERSONA, runs_root)
out = Path(EXPORT_DIR) if EXPORT_DIR else export.work_dir(run)
config = (export.ExportConfig.smoke() if SMOKE
          else export.ExportConfig(quants=tuple(QUANTS), parity_prompts=PARITY_PROMPTS))
print(f"model: {model_id}\nthis lesson writes to: {out}")

# %% [markdown]
# ## The adapter you trained
#
# Lesson 4 left TaskMaster's adapter in `adapter/` of your run folder. If it is not there (you
# are running this lesson on its own in smoke mode), a quick adapter with random weights
# stands in: the export path is the same, but it says nothing about TaskMaster's voice.

# %%
quick_dir = out / "quick_adapters" / spec.slug if SMOKE else None  # only smoke runs may stand in a random one
adapter, trained = export.pick_adapter(run / "adapter", model_id, quick_dir=quick_dir, seed=1)
origin = "trained in lesson 4" if trained else f"QUICK RANDOM ADAPTER: none trained on {model_id}"
print(f"adapter: {adapter} ({origin})")
print(f"its base model: {adapters.base_model(adapter)}")

# %% [markdown]
# ## 1. Merge
#
# An adapter is a small set of low-rank matrices added to a frozen base. To ship one file, add
# them into the base weights for good (`merge_and_unload`) and save a normal Hugging Face
# folder, with the tokenizer and chat template used in training. The merged model computes
# what base + adapter computed, up to rounding in the merged weights' precision, and no longer
# needs PEFT. (On Colab the adapter trained against the 4-bit base and is merged into the 16-bit
# original, so its replies can differ a little more: section 6 measures it.) Before each heavy
# step the export checks free disk and memory and says what it needs. Each step records what
# it was made from (`<file>.inputs.json`: the files' sizes and times, the settings), so a rerun
# skips what is still current and remakes what a retrained adapter has made stale.

# %%
merged = export.once(out / "merged", lambda p: export.merge_adapter(adapter, p, dtype=config.merge_dtype),
                     inputs={"adapter": adapters.identity(adapter), "dtype": config.merge_dtype})
print(f"{merged}: {export.param_count(merged):,} parameters, {export.size_of(merged) / 1e6:.1f} MB")

# %% [markdown]
# ## 2. Convert to GGUF with llama.cpp's converter
#
# GGUF is llama.cpp's file format: weights, tokenizer and chat template in one file. The
# converter is llama.cpp's own `convert_hf_to_gguf.py`, the copy that ships with the
# `llama-cpp-python` version installed here, run with its own `gguf-py` library so that
# writer and reader agree. The first file keeps 16-bit floats (f16): nothing is lost yet.

# %%
f16 = export.once(out / f"{spec.slug}.f16.gguf", lambda p: export.convert_to_gguf(merged, p),
                  inputs={"merged": io.identity(merged)})
types = {"f16": export.tensor_types(f16)}  # tensors per type, read back from the file
print(f"{f16.name}: {f16.stat().st_size / 1e6:.1f} MB, {types['f16']['tensors']}")

# %% [markdown]
# ## 3. Quantize, and look at what you got
#
# `llama_model_quantize` is llama.cpp's quantizer. **Q4_K_M** stores most weight matrices as
# Q4_K (4.5 bits a weight) and the most sensitive ones as Q6_K (about 6.6), **Q8_0** everything
# in 8.5. But k-quants pack blocks of 256 values
# along a row: a weight matrix whose rows are not a multiple of 256 wide cannot be Q4_K and
# falls back to another type. The file type says "Q4_K_M"; the tensors may say otherwise. Count them.

# %%
quantized = {q: export.once(out / f"{spec.slug}.{q}.gguf", lambda p, q=q: export.quantize_gguf(f16, p, q),
                            inputs={"f16": io.identity(f16), "quant": q}) for q in config.quants}
types.update({q: export.tensor_types(p) for q, p in quantized.items()})
for name, t in types.items():
    size = (f16 if name == "f16" else quantized[name]).stat().st_size
    print(f"{name:>7}: {size / 1e6:7.1f} MB  file type {t['file_type']:<7} tensors {t['tensors']}")

# %%
plots.gguf_tensor_types(types, path=out / "tensor_types.png")

# %% [markdown]
# SmolLM2-135M's hidden size is 576 = 2.25 x 256, so every matrix that reads the hidden state
# falls back (to Q5_0 or Q8_0) and only the feed-forward down projection, with rows of 1536,
# gets real k-quants: measured, its "Q4_K_M" file holds 16 Q4_K and 14 Q6_K tensors (all
# `ffn_down`) beside 166 Q5_0 and 15 Q8_0, 105 MB in all. The tiny smoke model (rows of 64)
# never gets a Q4_K at all. A 3B model with a hidden size of 3072 quantizes as the name
# promises. Always read the tensor types before you compare file sizes or quality across models.
#
# ## 4. Chat with it in llama.cpp
#
# `llama_cpp.Llama` loads the GGUF and formats the chat with the template stored inside the
# file. A well-exported model ends its turn with the token its chat template puts after every
# assistant message (`<|im_end|>` for SmolLM2, `<|eot_id|>` for Llama 3.2; the check reads it
# from the file's own template): that token must be the GGUF's EOS, llama.cpp must treat it as
# the end of generation and not print it. The check forces that token once to see it stop.

# %%
ship = quantized[config.quants[0]]
llm = llama_runtime.load_gguf(ship, n_ctx=config.n_ctx)
check = llama_runtime.chat_check(llm, export.CHECK_QUESTION, max_tokens=config.max_new_tokens)
llm.close()
print(f"USER: {export.CHECK_QUESTION[0]['content']}\n{spec.name} ({ship.name}): {check['reply']}\n")
print({k: v for k, v in check.items() if k != "reply"})

# %% [markdown]
# `finish_reason: stop` means the model ended the turn itself; `length` means it ran into
# `max_tokens` (the random smoke model never learnt to stop).
#
# ## 5. Every persona as an adapter over one base GGUF
#
# Lesson 6 switched persona adapters in PEFT. The deployed form is the same idea in llama.cpp:
# convert the *base* model to GGUF once, convert each adapter to a GGUF LoRA (9.8 MB for the
# embedded model's r=16 adapter, `bench/results/export.json`; tens of MB for a 3B model's)
# with `convert_lora_to_gguf.py --base`, load the base once and switch adapters per request.

# %%
base_dir = export.base_model_dir(adapter)
base_f16 = export.once(out / "base.f16.gguf", lambda p: export.convert_to_gguf(base_dir, p),
                       inputs={"base": io.identity(base_dir)})
print(f"{base_f16.name}: {base_f16.stat().st_size / 1e6:.1f} MB, the one base every persona shares")
loras = export.persona_loras(runs_root, model_id, out, personas=list(dict.fromkeys([spec.slug, *multi.PERSONAS])),
                             quick=SMOKE)

# %%
personas = llama_runtime.PersonaAdapters(base_f16, loras, n_ctx=config.n_ctx)
question = [{"role": "user", "content": "I keep putting off writing tests for my side project. Any advice?"}]
switched = {}
for name in [*loras, None]:
    personas.use(name)
    switched[name or "base"] = personas.reply(question, max_tokens=config.max_new_tokens)
    print(f"[{name or 'base, no adapter'}]\n{switched[name or 'base']}\n")
personas.close()

# %% [markdown]
# ## 6. Did the voice survive the export? (export parity)
#
# The same held-out prompts, greedy decoding, three systems: the merged Hugging Face model,
# the f16 GGUF and the quantized GGUF. Each GGUF builds its prompts from its *own* template and
# tokenizer, so a template or tokenizer fault already shows in f16, and what the 4-bit file
# adds on top of f16 is quantization loss. Two measures: the signature-phrase rate (with a
# paired bootstrap interval of its difference from HF over prompts: it should contain 0) and
# greedy token agreement (how far the replies run identical before they first differ).
# Lesson 5's evaluation has the richer measures; if these move, read the replies side by side
# in `parity.jsonl` to see what changed. (`parity.export_parity` does the measuring; the cell
# keeps its result, and a rerun reads it back while the files and settings are unchanged.)

# %%
from persona_lib.dataset import heldout_prompts

prompts = heldout_prompts(spec, config.parity_prompts)
parity_report = export.parity_once(out, merged, {"f16": f16, config.quants[0]: ship}, prompts,
                                   spec.signature_vocabulary, config)
print(f"per-prompt replies: {out / 'parity.jsonl'}")

# %%
print(f"{parity_report['n']} prompts, {parity_report['max_new_tokens']} greedy tokens each")
print(f"{'system':>8} {'signature rate':>15} {'diff vs HF [95% CI]':>22} {'token agreement':>16} "
      f"{'same prompt ids':>16}")
for name, s in parity_report["systems"].items():
    d = s.get("signature_diff_vs_hf")
    diff = f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]" if d else ""
    agree = f"{s['token_agreement']:.2f}" if d else ""
    same = f"{s['prompt_tokens_equal']:.0%}" if d else ""
    print(f"{name:>8} {s['signature_rate']['mean']:>15.2f} {diff:>22} {agree:>16} {same:>16}")

# %% [markdown]
# **What a good result looks like** (the TaskMaster adapter on the embedded model, 49 prompts,
# `bench/results/export.json`): the f16 file answers exactly as the Hugging Face model on 48
# of 49 prompts (98% [94, 100]); the 4-bit files answer differently word for word (Q4_K_M is
# identical on 1 of 49, because greedy replies part at the first token that differs), yet the
# voice survives: the signature rate of Q4_K_M differs from HF's by -0.04 [-0.14, +0.06], an
# interval that holds 0. If f16 already differs on most prompts, the template or tokenizer is
# at fault, not quantization: compare the "same prompt ids" column.

# %% [markdown]
# ## 7. Serve it: an OpenAI-compatible API on your machine
#
# `python -m llama_cpp.server` puts the GGUF behind the same HTTP API as OpenAI, so any OpenAI
# client (and most chat UIs) can talk to TaskMaster. `local_server` starts it on a free port
# of 127.0.0.1 and stops it when the block ends.

# %%
from persona_lib.llm import client, local_server

with local_server(ship, n_ctx=config.n_ctx) as endpoint:
    openai_client = client(endpoint)  # a plain openai.OpenAI pointed at the local server
    response = openai_client.chat.completions.create(model=endpoint.model, messages=export.CHECK_QUESTION,
                                                     max_tokens=config.max_new_tokens, temperature=0.0)
served = {"base_url": endpoint.base_url, "model": endpoint.model, "reply": response.choices[0].message.content,
          "finish_reason": response.choices[0].finish_reason}
print(f"{served['base_url']} ({served['model']}): {served['reply']!r} [{served['finish_reason']}]")

# %% [markdown]
# ## 8. The Ollama Modelfile
#
# Ollama does not run Jinja chat templates: its Modelfile carries a Go template. The one
# written here is the training chat template translated to Go, and the tests render the same
# conversations through the tokenizer, through the template inside the GGUF (as llama.cpp
# applies it) and through Go's real `text/template` over this TEMPLATE, and require the same
# text. SYSTEM is the system prompt every training example was rendered with (SmolLM2's
# template inserts its default one); TaskMaster's voice is in the weights, not in SYSTEM. For a
# template that is not ChatML (Llama 3.2 on Colab) the Modelfile leaves TEMPLATE out, so Ollama
# picks its own Go template that matches the chat template stored in the GGUF, and stops at the
# tokenizer's end-of-turn token.

# %%
tokenizer = models.load_tokenizer(str(merged))
files = {"Modelfile": ollama.modelfile(ship.name, tokenizer, temperature=config.temperature, num_ctx=config.num_ctx,
                                       title=f"{spec.name}, merged and quantized ({config.quants[0]})"),
         "Modelfile.adapter": ollama.modelfile(base_f16.name, tokenizer, adapter=loras[spec.slug].name,
                                               temperature=config.temperature, num_ctx=config.num_ctx,
                                               title=f"{spec.name} as a LoRA adapter over the base model")}
for name, text in files.items():
    io.atomic_write_text(out / name, text)
print(files["Modelfile"])

# %% [markdown]
# On your laptop, with [Ollama](https://ollama.com) installed, copy `Modelfile` and the GGUF
# it names into one folder and run, in that folder:

# %%
commands = ollama.ollama_commands(spec.slug)
print("\n".join(commands))

# %% [markdown]
# `Modelfile.adapter` is the multi-persona form: the base GGUF plus TaskMaster's GGUF LoRA
# (`ollama create taskmaster-lora -f Modelfile.adapter`). Write one per persona with
# `ollama.modelfile(base_f16.name, tokenizer, adapter=...)` and three personas share one base.
#
# ## Getting the file out of Colab
#
# On Colab your run folder is on Google Drive, and the next cell but one copies the Q4_K_M file
# there: download it from drive.google.com (`persona-lab/runs/taskmaster/export/`). Or push it
# to a (private) Hugging
# Face repo: set `HUB_REPO` above and an `HF_TOKEN` secret with write access. Unsloth's
# `model.save_pretrained_gguf(folder, tokenizer, quantization_method="q4_k_m")` is a one-line
# alternative on a GPU runtime (`export.export_unsloth` wraps it); it runs the same llama.cpp
# converter and quantizer, after building llama.cpp in the runtime.

# %%
if HUB_REPO:
    print("uploaded:", export.push_to_hub([ship, out / "Modelfile"], HUB_REPO))

# %%
summary = {"persona": spec.slug, "model": model_id, "adapter": str(adapter), "adapter_trained": trained,
           "files": {p.name: p.stat().st_size for p in [f16, *quantized.values(), base_f16, *loras.values()]},
           "tensor_types": types, "chat_check": check, "switched": switched, "served": served,
           "parity": parity_report["systems"], "signature_vocabulary": spec.signature_vocabulary,
           "modelfiles": list(files), "ollama": commands}
io.write_json(out / "summary.json", summary)
kept = export.keep([ship, *loras.values(), out / "Modelfile", out / "Modelfile.adapter", out / "tensor_types.png",
                    out / "parity.json", out / "parity.jsonl", out / "summary.json"], run / "export")
print(f"kept in your run folder: {', '.join(p.name for p in kept)} ({run / 'export'})")

# %% [markdown]
# ## Update your skill
#
# Your own persona-tuner skill (written in lesson 1, in `skill-first/` beside your run folders) has a
# placeholder for this lesson. The cell drafts the section from what you just measured; open
# the file and rewrite it in your words: what is clear, what is still confusing, what you would
# try next.

# %%
from persona_lib import skillfirst

print(skillfirst.fill(runs_root, "L07", skillfirst.draft(run, "L07")))

# %% [markdown]
# ## What you built
#
# Over seven lessons: a persona specification, a dataset in TaskMaster's voice, a LoRA
# adapter trained on it, an evaluation that showed the voice is there and the knowledge kept,
# three personas on one base, and now **TaskMaster as a file**: a 4-bit GGUF that llama.cpp
# and Ollama run on a laptop, an OpenAI-compatible server for your apps, and a Modelfile whose
# template is provably the one the model was trained with. The parity table says how much of
# the voice the 4-bit file kept.
#
# **Success criterion met:** *Deploy TaskMaster with a distinctive personality* (and, from the
# fine-tuning chapter, *export a fine-tuned model to GGUF for Ollama*). **Skill updated:** the
# "Export options" section of `.claude/skills/llmops-fine-tuner/SKILL.md` and the "Example:
# TaskMaster" section of `.claude/skills/persona-tuner/SKILL.md`.
#
# ## Exercises
#
# 1. Add `"Q6_K"` and `"Q4_0"` to `QUANTS`, re-run, and compare sizes and tensor types. Which
#    tensors fall back, and does Q4_0 (no k-quants) lose more of the voice than Q4_K_M?
# 2. Raise `PARITY_PROMPTS` to 40. Does the interval of the Q4_K_M difference still contain 0?
#    Where do the first differing tokens appear (open `parity.jsonl`)?
# 3. Pass TaskMaster's persona prompt (`persona_lib.spec.system_prompt(spec)`) as `system=` to
#    `ollama.modelfile`.
#    The tests would now fail: why is that the right outcome for an adapter trained without it?
# 4. On your laptop, run both `ollama create` variants (merged and adapter). Which loads faster,
#    and which is smaller on disk once you have all three personas?
