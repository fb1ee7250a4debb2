"""The main job as resumable stages over one run folder (`runs/<slug>/<stage>/`).

A stage writes its files, then `done.json` last (atomically). A rerun skips every stage
whose `done.json` exists, so an interrupted run resumes at the stage it was in; `force`
redoes them all. Later lessons add stages; the command that runs them stays `persona run`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from persona_lib import io, paths


@dataclass
class RunConfig:
    persona: str = "taskmaster"  # a shipped slug or a path to a spec YAML file
    model: str = "embedded"  # "embedded", "tiny", a Hub id or a local folder
    runs_root: str = "runs"  # run folders live in <runs_root>/<slug>/
    n_prompts: int = 5  # held-out prompts answered in the "before" picture: a glance, not a benchmark
    max_new_tokens: int = 120  # about 90 words: TaskMaster's replies are short by design
    force: bool = False  # redo finished stages instead of resuming

    def __post_init__(self):
        if self.n_prompts < 1:
            raise ValueError(f"n_prompts must be at least 1, got {self.n_prompts}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")

    @classmethod
    def smoke(cls, **overrides) -> "RunConfig":
        """Every stage on the tiny random-init model, in seconds: for tests and CI."""
        return cls(**{"model": "tiny", "n_prompts": 2, "max_new_tokens": 8, **overrides})


@dataclass
class StageResult:
    name: str
    folder: Path
    seconds: float
    skipped: bool
    summary: dict = field(default_factory=dict)


def _stage(run: Path, name: str, force: bool, body) -> StageResult:
    folder = run / name
    done = folder / "done.json"
    if done.is_file() and not force:
        record = io.read_json(done)
        print(f"[{name}] already done ({record['seconds']:.1f} s), skipping; --force redoes it")
        return StageResult(name, folder, record["seconds"], True, record["summary"])
    print(f"[{name}] running")
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    summary = body(folder)
    seconds = time.perf_counter() - start
    io.write_json(done, {"seconds": seconds, "summary": summary})
    print(f"[{name}] done in {seconds:.1f} s")
    return StageResult(name, folder, seconds, False, summary)


def heldout_prompts(spec, n: int) -> list[dict]:
    """The first `n` ordinary held-out prompts of a shipped persona, else the spec's examples."""
    from persona_lib.dataset import load_heldout

    path = paths.eval_dir() / f"{spec.slug}_heldout.jsonl"
    if path.is_file():
        records = [r for r in load_heldout(spec.slug) if r["kind"] == "ordinary"]
        return [{"id": r["id"], "messages": r["messages"]} for r in records[:n]]
    return [
        {"id": f"example-{i}", "messages": [{"role": "user", "content": ex["user"]}]}
        for i, ex in enumerate(spec.examples[:n], start=1)
    ]


def run(config: RunConfig) -> list[StageResult]:
    from persona_lib.spec import load_spec, save_spec, system_prompt

    spec = load_spec(config.persona)
    run_folder = paths.run_dir(spec.slug, config.runs_root)
    io.write_json(run_folder / "run_config.json", asdict(config))
    results = []

    def spec_stage(folder: Path) -> dict:
        save_spec(spec, folder / "spec.yaml")
        io.atomic_write_text(folder / "system_prompt.txt", system_prompt(spec) + "\n")
        return {"persona": spec.name, "traits": [t.name for t in spec.traits]}

    results.append(_stage(run_folder, "spec", config.force, spec_stage))

    def baseline_stage(folder: Path) -> dict:
        from persona_lib.chat import generate_replies
        from persona_lib.models import load_model

        model, tokenizer = load_model(config.model)
        prompts = heldout_prompts(spec, config.n_prompts)
        conversations = [p["messages"] for p in prompts]
        kw = dict(max_new_tokens=config.max_new_tokens)
        plain = generate_replies(model, tokenizer, conversations, desc="base, no system prompt", **kw)
        prompted = generate_replies(
            model, tokenizer, conversations, system_prompt=system_prompt(spec), desc="base + persona prompt", **kw
        )
        rows = [
            {"id": p["id"], "prompt": p["messages"][-1]["content"], "base": a, "base_with_persona_prompt": b}
            for p, a, b in zip(prompts, plain, prompted)
        ]
        io.write_jsonl(folder / "answers.jsonl", rows)
        io.atomic_write_text(folder / "answers.md", answers_markdown(spec.name, config.model, rows))
        return {"model": config.model, "prompts": len(rows)}

    results.append(_stage(run_folder, "baseline", config.force, baseline_stage))
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
