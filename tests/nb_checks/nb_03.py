"""What notebook 03 writes in smoke mode (CI has no OpenAI key: the local llama.cpp path)."""

import json
from pathlib import Path


def check(run: Path) -> None:
    from persona_lib import dataset, generate, teacher
    from persona_lib.spec import load_spec

    data = run / "data"
    # Without a key the local model's records go to a file of their own, so that a rerun with a
    # key neither resumes from them nor merges them into training.
    assert not (data / "generated.jsonl").exists()
    generated = data / "generated-local.jsonl"
    records = dataset.load_records(generated, persona="taskmaster") if generated.stat().st_size else []
    ledger = [json.loads(line) for line in generate.ledger_path(generated).read_text().splitlines()]
    report = json.loads(generate.report_path(generated).read_text())

    # Two requests through the real local server, each booked once: kept or rejected with a reason.
    assert report["endpoint"]["kind"] == "llamacpp" and report["endpoint"]["dialect"] == "json_object"
    assert report["target"] == 2 and report["requests"] >= 2 and not report["failed_this_run"]
    assert len(ledger) == 2 and {row["status"] for row in ledger} <= {"accepted", "rejected"}
    assert all(row["reason"] for row in ledger if row["status"] == "rejected")
    assert report["accepted_total"] == len(records) == sum(row["status"] == "accepted" for row in ledger)
    assert sum(report["rejected_this_run"].values()) + report["accepted_this_run"] == 2
    assert report["vocabulary"]["phrases"] == 12 and report["cost_usd"] == 0.0
    for record in records:
        assert teacher.index_of(record["id"]) is not None
        assert record["source"].startswith("llamacpp:") and record["messages"][0]["role"] == "user"
    assert (data / "generation_report.png").stat().st_size > 10_000
    # The spec the records were written for, so that a run after an edit in lesson 1 sets them aside.
    written_for = json.loads(generate.spec_path(generated).read_text())["specs"]["taskmaster"]
    assert written_for["spec_sha256"] == teacher.spec_digest(load_spec("taskmaster"))
    assert not generate.spec_path(data / "generated.jsonl").exists()  # planning a batch writes no record

    # Without a key the training set is the shipped data alone, validated.
    merged = dataset.load_records(data / "merged.jsonl", persona="taskmaster")
    assert merged == dataset.load_shipped("taskmaster")

    batch = [json.loads(line) for line in (data / "batch_input.jsonl").read_text().splitlines()]
    # Planned against OpenAI's generated.jsonl (absent), not the local model's file: the first 20
    # items of the plan, whatever the local model answered.
    plan = generate.GenerateConfig()
    first = [teacher.item_at(load_spec("taskmaster"), i, plan.seed, plan.turn_weights).id for i in range(20)]
    digest = teacher.spec_digest(load_spec("taskmaster"))[:12]
    assert [row["custom_id"] for row in batch] == [f"{item}@{digest}" for item in first]
    assert all(row["body"]["response_format"]["type"] == "json_schema" for row in batch)


def check_skill(run: Path) -> None:
    """The lesson's section of the learner's skill (beside the run folders) is filled."""
    from persona_lib import skillfirst

    assert skillfirst.progress(run.parent)["L03"], "the Update your skill cell did not fill L03"
