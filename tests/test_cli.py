"""`persona run --smoke`: every stage of the main job on the tiny model, resumable."""

import json

import pytest

from persona_lib import io
from persona_lib.cli import main
from persona_lib.pipeline import MIN_CONVERSATIONS, RunConfig, persona_records

STAGES = ["spec", "baseline", "data", "adapter", "eval", "export", "chat"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", "--smoke", "--runs-root", str(root)]) == 0
    return root / "taskmaster"


def test_every_stage_ran_and_wrote_its_artifacts(smoke_run):
    for stage in STAGES:
        assert (smoke_run / stage / "done.json").is_file(), stage
    rows = io.read_jsonl(smoke_run / "baseline" / "answers.jsonl")
    assert len(rows) == 2 and all(set(r) == {"id", "prompt", "base", "base_with_persona_prompt"} for r in rows)
    assert (smoke_run / "spec" / "system_prompt.txt").read_text().startswith("You are TaskMaster")
    data = io.read_json(smoke_run / "data" / "done.json")["summary"]
    assert data["train"] + data["validation"] + data["reserved_for_classifier"] == data["conversations"]
    train_ids = {r["id"] for r in io.read_jsonl(smoke_run / "data" / "train.jsonl")}
    from persona_lib.metrics import is_reserved

    assert not any(is_reserved(i) for i in train_ids)  # the classifier's slice never trains an adapter
    assert (smoke_run / "adapter" / "adapter_config.json").is_file()
    assert (smoke_run / "adapter" / "loss_curve.png").stat().st_size > 5000
    report = io.read_json(smoke_run / "eval" / "report.json")
    assert list(report["systems"]) == ["base_prompted", "tuned"]  # the quick eval: the targets' two systems
    assert report["drift"] == {} and "drift not measured (drift_systems is empty)" in report["notes"]
    assert set(report["paired"]) == {"tuned_vs_base_prompted"} and report["targets"]["persona_consistency"]["n"] == 4
    rows = io.read_jsonl(smoke_run / "eval" / "answers.jsonl")
    assert all(set(r) == {"id", "kind", "prompt", "base_prompted", "tuned"} for r in rows)
    assert (smoke_run / "export" / "taskmaster.Q4_K_M.gguf").stat().st_size > 1_000_000
    chat = io.read_jsonl(smoke_run / "chat" / "chat.jsonl")
    assert chat and all(r["eos_is_end_of_turn"] and r["forced_end_of_turn_stops"] for r in chat)


def test_rerun_resumes_every_stage(smoke_run, capsys):
    assert main(["run", "--smoke", "--runs-root", str(smoke_run.parent)]) == 0
    out = capsys.readouterr().out
    assert out.count("already done") == len(STAGES)
    assert [line.split()[0] for line in out.splitlines() if line.split()[:1] in (["persona"], ["knowledge"], ["diversity"])
            and ("yes" in line.split() or "no" in line.split())] == ["persona", "knowledge", "diversity"]
    assert "taskmaster.Q4_K_M.gguf" in out


def test_interrupted_stage_reruns_alone(smoke_run, capsys):
    (smoke_run / "chat" / "done.json").unlink()  # as if killed before the stage finished
    assert main(["run", "--smoke", "--runs-root", str(smoke_run.parent)]) == 0
    out = capsys.readouterr().out
    assert out.count("already done") == len(STAGES) - 1 and "[chat] running" in out


def test_a_new_persona_without_data_stops_before_training(tmp_path, capsys, tiny_path):
    from persona_lib.spec import load_spec, save_spec

    spec = load_spec("zen_coder")
    spec.name, spec.slug = "Zen Two", "zen_two"
    path = save_spec(spec, tmp_path / "zen_two.yaml")
    assert main(["run", "--smoke", "--persona", str(path), "--runs-root", str(tmp_path / "runs")]) == 3
    err = capsys.readouterr().err
    assert "Zen Two has 0 usable conversation(s)" in err and f"at least {MIN_CONVERSATIONS}" in err
    assert f"--persona {path} --generate" in err and "--data" in err
    assert not (tmp_path / "runs" / "zen_two" / "adapter").exists()


def test_extra_data_file_is_read_for_the_persona(tmp_path):
    from persona_lib.dataset import load_shipped
    from persona_lib.spec import load_spec

    spec = load_spec("zen_coder")
    spec.slug = "zen_two"
    records = [{**r, "persona": "zen_two"} for r in load_shipped("zen_coder")]
    io.write_jsonl(tmp_path / "mine.jsonl", records)
    got = persona_records(spec, RunConfig(data=str(tmp_path / "mine.jsonl")), tmp_path)
    assert [r["id"] for r in got] == [r["id"] for r in records]


def test_spec_check_reports_every_problem(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: ''\nslug: Bad Slug\ncolour: blue\n")
    assert main(["spec", "check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "name" in err and "slug" in err and "colour" in err
    assert main(["spec", "check", "taskmaster"]) == 0


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="n_prompts"):
        main(["run", "--smoke", "--n-prompts", "0"])
    with pytest.raises(SystemExit):
        main(["run", "--judge", "gpt"])
