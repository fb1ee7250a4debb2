"""The two skill files and the learning spec: valid frontmatter, every section filled, and
every persona_lib name they mention real."""

import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SKILLS = {
    "persona-tuner": [
        "Persona specification template", "Dataset creation patterns", "Training configuration",
        "Evaluation framework", "Multi-persona patterns", "Example: TaskMaster",
    ],
    "llmops-fine-tuner": [
        "Hardware context", "LoRA configuration", "QLoRA configuration", "Training arguments",
        "Unsloth setup", "Export options", "Troubleshooting", "Validation checks",
    ],
}
PLACEHOLDERS = re.compile(r"\b(TODO|TBD|FIXME|XXX)\b|lorem ipsum|coming soon", re.IGNORECASE)


def read(name: str) -> tuple[dict, str]:
    text = (ROOT / ".claude" / "skills" / name / "SKILL.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", text, re.DOTALL)
    assert match, f"{name}: SKILL.md must open with YAML frontmatter between --- lines"
    return yaml.safe_load(match.group(1)), match.group(2)


@pytest.mark.parametrize("name", SKILLS)
def test_frontmatter(name):
    front, _ = read(name)
    assert front["name"] == name
    assert isinstance(front["description"], str) and len(front["description"]) > 80


@pytest.mark.parametrize("name", SKILLS)
def test_sections_present_and_filled(name):
    _, body = read(name)
    assert not PLACEHOLDERS.search(body), PLACEHOLDERS.search(body).group(0)
    headings = re.findall(r"^## (.+)$", body, re.MULTILINE)
    for section in SKILLS[name]:
        assert any(h.startswith(section) for h in headings), f"{name}: missing section '{section}'"
    for chunk in re.split(r"^## ", body, flags=re.MULTILINE)[1:]:
        words = len(chunk.split("\n", 1)[-1].split())
        assert words >= 30, f"{name}: section '{chunk.splitlines()[0]}' has only {words} words"


@pytest.mark.parametrize("path", [".claude/skills/persona-tuner/SKILL.md", ".claude/skills/llmops-fine-tuner/SKILL.md",
                                  "README.md", "LEARNING-SPEC.md"])
def test_every_persona_lib_name_mentioned_exists(path):
    text = (ROOT / path).read_text()
    names = set(re.findall(r"persona_lib(?:\.[A-Za-z_][A-Za-z0-9_]*)+", text))
    assert names or path == "LEARNING-SPEC.md"
    for dotted in names:
        parts = dotted.split(".")
        obj, i = importlib.import_module(parts[0]), 1
        while i < len(parts):
            try:
                obj = importlib.import_module(".".join(parts[: i + 1]))
            except ModuleNotFoundError:
                assert hasattr(obj, parts[i]), f"{path}: {dotted} does not exist"
                obj = getattr(obj, parts[i])
            i += 1


def test_learning_spec_lists_the_criteria_as_checkboxes():
    text = (ROOT / "LEARNING-SPEC.md").read_text()
    boxes = re.findall(r"^- \[ \] (.+)$", text, re.MULTILINE)
    assert len(boxes) == 7
    for heading in ["What I want to learn", "Why", "Success criteria", "Constraints", "Questions",
                    "What I already know"]:
        assert f"## {heading}" in text
