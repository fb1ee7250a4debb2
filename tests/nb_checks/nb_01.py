"""What notebook 01 writes in smoke mode."""

import json
from pathlib import Path


def check(run: Path) -> None:
    from persona_lib.spec import load_spec

    assert load_spec(run / "spec" / "spec.yaml") == load_spec("taskmaster")
    rows = [json.loads(line) for line in (run / "spec" / "before.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["model"] == "tiny" and row["prompt"].strip()
        assert isinstance(row["base"], str) and isinstance(row["base_with_persona_prompt"], str)


def check_skill(run: Path) -> None:
    """Lesson 1 wrote the learner's LEARNING-SPEC and a skill scaffold with a placeholder per lesson."""
    from persona_lib import skillfirst

    assert (skillfirst.folder(run.parent) / "LEARNING-SPEC.md").read_text().startswith("# Learning spec")
    assert not any(skillfirst.progress(run.parent).values())  # every later section still to be learned
