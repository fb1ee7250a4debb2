"""What notebook 02 writes in smoke mode."""

import json
from pathlib import Path


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check(run: Path) -> None:
    from persona_lib.dataset import load_shipped

    data = run / "data"
    splits = {name: read(data / f"{name}.jsonl") for name in ("train", "validation", "test")}
    ids = {name: {r["id"] for r in part} for name, part in splits.items()}
    from persona_lib.dataset import split_reserved

    shipped = load_shipped("taskmaster")
    trainable, reserved = split_reserved(shipped)
    assert sum(len(v) for v in ids.values()) == len(trainable)  # planted copies and reserved records are gone
    assert {r["id"] for r in read(data / "classifier_reserved.jsonl")} == {r["id"] for r in reserved}
    assert not set().union(*ids.values()) & {r["id"] for r in reserved}
    assert (not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
            and not (ids["validation"] & ids["test"]))
    assert {r["topic"] for r in splits["train"]} == {r["topic"] for r in shipped}
    assert len(splits["train"]) >= 0.75 * len(trainable)
    stats = json.loads((data / "stats.json").read_text())
    assert stats["conversations"] == len(shipped)
    assert stats["length_unit"] == "tokens" and stats["example_length"]["max"] > 50
    assert stats["dedup_dropped"] == ["planted-0", "planted-1"]
    assert stats["splits"] == {k: len(v) for k, v in splits.items()} and stats["reserved"] == len(reserved)
    openai_rows = read(data / "train_openai.jsonl")
    assert len(openai_rows) == len(splits["train"]) and set(openai_rows[0]) == {"messages"}
    for name in ("token_lengths.png", "topic_coverage.png", "duplicates.png"):
        assert (data / name).stat().st_size > 5000


def check_skill(run: Path) -> None:
    """The lesson's section of the learner's skill (beside the run folders) is filled."""
    from persona_lib import skillfirst

    assert skillfirst.progress(run.parent)["L02"], "the Update your skill cell did not fill L02"
