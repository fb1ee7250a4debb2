"""The Skill-First loop: the learner's own LEARNING-SPEC and persona-tuner skill, grown lesson by lesson.

Before lesson 1's content the learner writes what they want to learn (LEARNING-SPEC.md) and
a skill scaffold (SKILL.md) with one placeholder per later lesson; each lesson ends by filling
its section from what the learner just measured. Both live beside the run folders
(`<runs root>/skill-first/`, on Drive in Colab: one skill for the chapter, whichever persona
the learner tunes), never overwritten once written: they are the learner's. The repository's
own LEARNING-SPEC.md and .claude/skills/ are the answer key.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from persona_lib.io import atomic_write_text

# Lesson -> the skill section it fills, as the chapter names them.
SECTIONS = {
    "L02": "Persona Dataset Design",  # the persona specification template
    "L03": "Dataset Creation Patterns",
    "L04": "Training Configuration",
    "L05": "Evaluation Framework",
    "L06": "Multi-Persona Patterns",
    "L07": "Example: TaskMaster",
}

LEARNING_SPEC = """\
# Learning spec: persona tuning

## What I want to learn
(In your words: e.g. "how to give my task assistant a voice that holds without a system prompt".)

## Why it matters
(Whom it helps, and what changes when the voice is in the weights.)

## Success criteria
- [ ] I can tell style tuning (how a model speaks) from knowledge tuning (what it knows)
- [ ] I can write a persona specification that can be trained on
- [ ] I have 200+ persona-consistent training conversations
- [ ] I fine-tuned with hyperparameters chosen for style, and can say why
- [ ] I measured persona consistency with an LLM judge, and know when to trust it
- [ ] I can switch between several personas in one model
- [ ] My persona runs locally from a GGUF file

## Constraints
(Colab free tier with a T4, about five hours, an OpenAI key or none, ...)

## Questions I need answered
- How does style tuning differ from knowledge tuning?
- How many examples does a personality need?
- Which hyperparameters matter most for style?
- How do I measure "personality consistency"?
- Can one model hold several personas?

## What I already know
(LoRA? chat templates? evaluation?)
"""


def skill_scaffold(persona: str) -> str:
    placeholders = "\n\n".join(f"## {title}\n\n[TO BE LEARNED: {lesson} - {title}]"
                               for lesson, title in SECTIONS.items())
    return f"""\
---
name: persona-tuner
description: Fine-tune a small language model to hold a persona ({persona}) - a personality, brand voice or communication style, i.e. how the model speaks rather than what it knows.
---

# persona-tuner

## Purpose
Given a base model, a persona specification and example conversations, produce
persona-consistent training data, a style-transfer training configuration, an evaluation
framework and multi-persona switching.

## When to use
- A clear personality to express, and a few hundred conversations in that voice (or a way to write them).

## When not to use
- No clear personality requirements.
- Fewer than about 100 example conversations of the voice: write a system prompt instead.

{placeholders}
"""  # noqa: E501 (the skill file's description line, one line by its format)


def folder(runs_root: str | os.PathLike) -> Path:
    return Path(runs_root) / "skill-first"


def start(runs_root: str | os.PathLike, persona: str) -> dict[str, Path]:
    """Write the learner's LEARNING-SPEC.md and skill scaffold beside the run folders, unless
    they are already there (then they are the learner's and stay as they are)."""
    out = folder(runs_root)
    files = {"learning_spec": out / "LEARNING-SPEC.md", "skill": out / "persona-tuner" / "SKILL.md"}
    if not files["learning_spec"].is_file():
        atomic_write_text(files["learning_spec"], LEARNING_SPEC)
    if not files["skill"].is_file():
        atomic_write_text(files["skill"], skill_scaffold(persona))
    return files


class NotYet(str):
    """What `draft` says when the lesson's files are not there yet: `fill` shows it and keeps the
    placeholder, so that running the cell again after the lesson fills the section."""


def fill(runs_root: str | os.PathLike, lesson: str, text: str) -> str:
    """Put `text` (what the learner found in `lesson`) in that lesson's section of their skill,
    in place of its placeholder. A section already filled is left alone (the learner may have
    rewritten it). Returns the section as it now reads (a NotYet `text`: that text)."""
    if lesson not in SECTIONS:
        raise ValueError(f"unknown lesson {lesson!r}: use one of {', '.join(SECTIONS)}")
    path = start(runs_root, "your persona")["skill"]  # a lesson run on its own starts the scaffold
    if isinstance(text, NotYet):
        return text
    skill = path.read_text(encoding="utf-8")
    placeholder = f"[TO BE LEARNED: {lesson} - {SECTIONS[lesson]}]"
    if placeholder in skill:
        skill = skill.replace(placeholder, text.strip())
        atomic_write_text(path, skill)
    return section(skill, SECTIONS[lesson])


def section(markdown: str, title: str) -> str:
    """The body of the `## title` section of a Markdown text ("" when absent)."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    return match.group(1).strip() if match else ""


def progress(runs_root: str | os.PathLike) -> dict[str, bool]:
    """Which lessons' sections of the learner's skill are filled."""
    skill = (folder(runs_root) / "persona-tuner" / "SKILL.md").read_text(encoding="utf-8")
    return {lesson: f"[TO BE LEARNED: {lesson} -" not in skill for lesson in SECTIONS}


def draft(run: str | os.PathLike, lesson: str) -> str:
    """A first draft of `lesson`'s section, from what that lesson wrote in the run folder: the
    learner's numbers, for the learner to rewrite in their own words. Says what is missing
    when the lesson's files are not there."""
    import json

    run = Path(run)

    def read(*parts):
        path = run.joinpath(*parts)
        return json.loads(path.read_text()) if path.is_file() else None

    if lesson == "L02":
        stats = read("data", "stats.json")
        if stats:
            return (f"- The spec: traits with five scored levels, a signature vocabulary, an avoid list: what the "
                    f"data, the judge and the classifier all read.\n- My data: {stats['conversations']} conversations, "
                    f"{stats['multi_turn_share']:.0%} multi-turn; split {stats.get('splits')} "
                    f"(seed {stats.get('seed')}), "
                    f"{stats.get('reserved', 0)} reserved for the classifier.")
    if lesson == "L03":
        report = read("data", "generated.report.json") or read("data", "generated-local.report.json")
        if report:
            return (f"- Generated {report.get('accepted_total')} conversations through a quality gate "
                    f"({report.get('rejected_this_run')} rejected this run), {report.get('requests')} requests, "
                    f"${report.get('cost_usd') or 0:.4f}.\n- What the gate rejected, and why: (your words)")
    if lesson == "L04":
        manifest = read("adapter", "manifest.json")
        if manifest:
            c = manifest["config"]
            return (f"- {manifest['backend']} on {c['model_id']}, {manifest['precision']}: LoRA r={c['lora_r']}, "
                    f"alpha={c['lora_alpha']}, lr={c['learning_rate']}, {c['num_epochs']} epochs, "
                    f"{manifest['steps']} updates.\n- Loss: {manifest.get('metrics', {})}\n- Why these values for a "
                    "voice: (your words)")
    if lesson == "L05":
        report = read("eval", "report.json")
        if report:
            targets = "; ".join(f"{k}: {'met' if t['met'] else 'not met'}" for k, t in report["targets"].items())
            return (f"- Targets on {report['prompts']['n']} held-out prompts: {targets}.\n- Judge: "
                    f"{'used' if report['judge']['used'] else report['judge']['why']}.\n"
                    "- When I trust the judge, and when the classifier: (your words)")
    if lesson == "L06":
        summary = read("multi", "summary.json")
        if summary:
            return (f"- Bleed diagonal (share of replies in the right voice): separate adapters "
                    f"{summary['diagonal']['separate']}, one conditioned adapter "
                    f"{summary['diagonal']['conditioned']}.\n"
                    "- Which design I would ship, and why: (your words)")
    if lesson == "L07":
        summary = read("export", "summary.json")
        if summary:
            sizes = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in summary["files"].items())
            return (f"- Exported {summary['persona']} from {summary['model']}: {sizes}.\n- Chat check: "
                    f"{'passed' if summary['chat_check']['ok'] else 'failed'}.\n- My persona at home: (your words)")
    return NotYet(f"(lesson {lesson}'s files are not in {run}: run the lesson, then this cell)")
