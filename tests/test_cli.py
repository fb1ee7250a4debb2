"""`persona run --smoke`: the main job's plumbing on the tiny model, resumable."""

import json

import pytest

from persona_lib.cli import main


def test_run_smoke_writes_answers_and_resumes(tmp_path, capsys, tiny_path):
    args = ["run", "--smoke", "--runs-root", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    run = tmp_path / "taskmaster"
    rows = [json.loads(line) for line in (run / "baseline" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(set(r) == {"id", "prompt", "base", "base_with_persona_prompt"} for r in rows)
    assert (run / "spec" / "system_prompt.txt").read_text().startswith("You are TaskMaster")
    assert str(run / "baseline" / "answers.md") in out
    done = json.loads((run / "baseline" / "done.json").read_text())
    assert done["summary"] == {"model": "tiny", "prompts": 2}

    assert main(args) == 0  # second run: both stages resume from done.json
    out = capsys.readouterr().out
    assert out.count("already done") == 2

    assert main(args + ["--force"]) == 0
    assert "already done" not in capsys.readouterr().out


def test_interrupted_stage_reruns(tmp_path, capsys, tiny_path):
    args = ["run", "--smoke", "--runs-root", str(tmp_path)]
    assert main(args) == 0
    (tmp_path / "taskmaster" / "baseline" / "done.json").unlink()  # as if killed before finishing
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[spec] already done" in out and "[baseline] running" in out


def test_run_with_another_spec_file(tmp_path, capsys, tiny_path):
    from persona_lib.spec import load_spec, save_spec

    spec = load_spec("zen_coder")
    path = save_spec(spec, tmp_path / "mine.yaml")
    assert main(["run", "--smoke", "--persona", str(path), "--runs-root", str(tmp_path / "runs")]) == 0
    assert (tmp_path / "runs" / "zen_coder" / "baseline" / "answers.jsonl").is_file()


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
