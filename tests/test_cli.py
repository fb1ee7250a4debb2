"""`persona run --smoke`: every stage of the main job on the tiny model, resumable."""

import json

import pytest

from persona_lib import io
from persona_lib.chat import CHAT
from persona_lib.cli import main
from persona_lib.pipeline import MIN_CONVERSATIONS, RunConfig, persona_records

STAGES = ["spec", "baseline", "data", "adapter", "eval", "export", "chat"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    assert main(["run", "--smoke", "--runs-root", str(root)]) == 0
    return root / "taskmaster-smoke"  # the tiny model's run never lands in the real persona's folder


def test_every_stage_ran_and_wrote_its_artifacts(smoke_run):
    for stage in STAGES:
        assert (smoke_run / stage / "done.json").is_file(), stage
    rows = io.read_jsonl(smoke_run / "baseline" / "answers.jsonl")
    assert len(rows) == 2 and all(set(r) == {"id", "prompt", "base", "base_with_persona_prompt", "decoding"}
                                  for r in rows)
    assert {r["decoding"] for r in rows} == {CHAT.label}  # as lesson 1 and the evaluation decode
    assert (smoke_run / "spec" / "system_prompt.txt").read_text().startswith("You are TaskMaster")
    data = io.read_json(smoke_run / "data" / "done.json")["summary"]
    assert data["train"] + data["validation"] + data["reserved_for_classifier"] == data["conversations"]
    train_ids = {r["id"] for r in io.read_jsonl(smoke_run / "data" / "train.jsonl")}
    from persona_lib.dataset import is_reserved

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
    assert [line.split()[0] for line in out.splitlines()
            if line.split()[:1] in (["persona"], ["knowledge"], ["diversity"])
            and ("yes" in line.split() or "no" in line.split())] == ["persona", "knowledge", "diversity"]
    assert "taskmaster.Q4_K_M.gguf" in out


def test_interrupted_stage_reruns_alone(smoke_run, capsys):
    (smoke_run / "chat" / "done.json").unlink()  # as if killed before the stage finished
    assert main(["run", "--smoke", "--runs-root", str(smoke_run.parent)]) == 0
    out = capsys.readouterr().out
    assert out.count("already done") == len(STAGES) - 1 and "[chat] resuming" in out


def test_a_new_persona_without_data_stops_before_training(tmp_path, capsys, tiny_path):
    from persona_lib.spec import load_spec, save_spec

    spec = load_spec("zen_coder")
    spec.name, spec.slug = "Zen Two", "zen_two"
    path = save_spec(spec, tmp_path / "zen_two.yaml")
    assert main(["run", "--smoke", "--persona", str(path), "--runs-root", str(tmp_path / "runs")]) == 3
    err = capsys.readouterr().err
    assert "Zen Two has 0 usable conversation(s)" in err and f"at least {MIN_CONVERSATIONS}" in err
    assert f"--persona {path} --generate" in err and "--data" in err
    assert not (tmp_path / "runs" / "zen_two-smoke" / "baseline").exists()  # told before any model loaded


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


def _bad_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "persona": "taskmaster", "topic": "x", "messages": []}\nnot json\n')
    return str(path)


def _malformed_spec(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: Broken\nslug: [\n")
    return str(path)


# Every user error: one message on stderr that names the flag, file or field and the fix, exit
# status 2, no traceback. (argv, what the message must contain)
BAD_INPUTS = [
    (["--n-prompts", "0"], ["--n-prompts", "must be at least 1, got 0"]),
    (["--eval-prompts", "many"], ["--eval-prompts", "'many' is not a whole number"]),
    (["--max-new-tokens", "-5"], ["--max-new-tokens", "at least 1"]),
    (["--generate", "-1"], ["--generate", "at least 0"]),
    (["--judge", "gpt"], ["--judge", "invalid choice", "none"]),
    (["--data", "{tmp}/nowhere.jsonl"], ["--data", "nowhere.jsonl: no such file"]),
    (["--persona", "{tmp}/missing.yaml"], ["missing.yaml"]),
    (["--persona", "no_such_persona"], ["no shipped persona spec 'no_such_persona'", "taskmaster"]),
    (["--persona", "MALFORMED"], ["broken.yaml", "problem"]),
    (["--data", "BADLINES"], ["bad.jsonl:1", "bad.jsonl:2", "not valid JSON"]),
    (["--config", "{tmp}/none.yaml"], ["cannot read", "none.yaml"]),
    (["--config", "CONFIG:train: {learnig_rate: 0.01}"],
     ["run.yaml", "train: unknown TrainConfig field(s) learnig_rate"]),
    (["--config", "CONFIG:export: {quants: [Q3]}"], ["run.yaml", "export: quants must be a non-empty subset"]),
    (["--config", "CONFIG:generate: -1"], ["run.yaml", "generate must be 0 or more"]),
    (["--config", "CONFIG:[a, b"], ["run.yaml is not valid YAML"]),
]


def _config(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text + "\n")
    return str(path)


@pytest.mark.parametrize("argv, expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_inputs_are_one_message_and_exit_2(tmp_path, capsys, argv, expected):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    argv = [_malformed_spec(tmp_path) if a == "MALFORMED" else _bad_lines(tmp_path) if a == "BADLINES"
            else _config(tmp_path, a[len("CONFIG:"):]) if a.startswith("CONFIG:") else a for a in argv]
    try:
        status = main(["run", "--smoke", "--runs-root", str(tmp_path / "runs"), *argv])
    except SystemExit as e:  # argparse's own refusals
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err and err.startswith("persona")
    for text in expected:
        assert text in err, (text, err)
    assert not (tmp_path / "runs" / "taskmaster-smoke" / "baseline").exists()  # refused before any model loaded


def test_a_full_disk_is_a_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    import errno

    from persona_lib import pipeline

    def full(config):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "runs" / "x.json"))

    monkeypatch.setattr(pipeline, "run", full)
    assert main(["run", "--smoke", "--runs-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "no space left on the disk while writing" in err and "x.json" in err and "resumes" in err


def test_a_changed_setting_reruns_its_stage_and_those_after(smoke_run, tmp_path, capsys):
    """--max-new-tokens is read by the baseline, eval and chat stages: those rerun, each saying
    why; spec, data, adapter and export are reused (their fingerprints do not hold it)."""
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(smoke_run, root / smoke_run.name)
    capsys.readouterr()
    assert main(["run", "--smoke", "--runs-root", str(root), "--max-new-tokens", "9"]) == 0
    out = capsys.readouterr().out
    rerun = [line.split("]")[0].strip("[") for line in out.splitlines() if "rerunning (" in line]
    assert rerun == ["baseline", "eval", "chat"], out
    assert "[baseline] rerunning (max_new_tokens changed since it ran)" in out
    assert "[chat] rerunning (export, max_new_tokens changed since it ran)" not in out  # export was reused
    assert "[chat] rerunning (max_new_tokens changed since it ran)" in out
    assert out.count("already done") == 4


def test_a_settings_file_reaches_the_stages_and_flags_win(smoke_run, tmp_path, capsys):
    """`--write-config` writes every stage's settings; edited and given back with `--config`,
    a train: setting retrains the adapter and reruns what follows it; a flag beats the file."""
    import shutil

    import yaml

    from persona_lib.pipeline import RunConfig

    root = tmp_path / "runs"
    shutil.copytree(smoke_run, root / smoke_run.name)
    path = tmp_path / "run.yaml"
    assert main(["run", "--smoke", "--runs-root", str(root), "--write-config", str(path)]) == 0
    assert main(["run", "--smoke", "--write-config", str(path)]) == 2  # never overwrites
    written = yaml.safe_load(path.read_text())
    assert written["train"]["learning_rate"] == RunConfig.smoke_preset().stage_configs()["train"].learning_rate
    assert written["export"]["quants"] == ["Q4_K_M"] and written["eval"]["max_prompts"] == 4
    written["train"]["learning_rate"] = 0.002
    written["max_new_tokens"] = 99
    path.write_text(yaml.safe_dump(written))
    capsys.readouterr()
    assert main(["run", "--smoke", "--runs-root", str(root), "--config", str(path), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "[adapter] rerunning (train_config changed since it ran)" in out, out
    rerun = [line.split("]")[0].strip("[") for line in out.splitlines() if "rerunning (" in line]
    assert rerun == ["adapter", "eval", "export", "chat"], out  # max_new_tokens 8 from the flag: baseline reused
    run_config = json.loads((root / smoke_run.name / "run_config.json").read_text())
    assert run_config["train"]["learning_rate"] == 0.002 and run_config["max_new_tokens"] == 8


def test_an_upstream_change_reruns_everything_downstream(tmp_path, capsys):
    from persona_lib.pipeline import _stage

    calls = []

    def body(name):
        def run(folder):
            calls.append(name)
            (folder / "out.txt").write_text(name)
            return {}
        return run

    def chain(setting):
        a = _stage(tmp_path, "a", False, body("a"), {"setting": setting})
        b = _stage(tmp_path, "b", False, body("b"), {"a": a.fingerprint})
        return _stage(tmp_path, "c", False, body("c"), {"b": b.fingerprint, "other": 1})

    chain(1)
    chain(1)
    assert calls == ["a", "b", "c"]
    chain(2)
    assert calls == ["a", "b", "c", "a", "b", "c"]
    out = capsys.readouterr().out
    assert "[a] rerunning (setting changed since it ran)" in out and "[b] rerunning (a changed" in out
    assert "[c] rerunning (b changed" in out


RUNNER = "import sys; from persona_lib.cli import main; sys.exit(main(['run', '--smoke', '--runs-root', sys.argv[1]]))"


def test_killed_in_each_stage_resumes_to_the_same_artifacts(smoke_run, tmp_path):
    """kill -9 as each stage starts, in turn, then let the run finish: the artifacts equal an
    uninterrupted run's, and no killed stage left a done.json behind."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "runs"
    run = root / smoke_run.name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    killed = []
    for stage in STAGES:
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(root)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while not (run / stage / "started.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed.append(stage)
        proc.wait(timeout=60)
    assert len(killed) >= len(STAGES) - 1, killed
    final = subprocess.run([sys.executable, "-c", RUNNER, str(root)], env=env, capture_output=True, text=True,
                           timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    for stage in STAGES:
        assert (run / stage / "done.json").is_file(), stage
    for name in ("data/train.jsonl", "data/validation.jsonl", "baseline/answers.jsonl", "eval/answers.jsonl",
                 "chat/chat.jsonl"):
        assert io.read_jsonl(run / name) == io.read_jsonl(smoke_run / name), name
    from safetensors.torch import load_file

    resumed = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    reference = load_file(str(smoke_run / "adapter" / "adapter_model.safetensors"))
    assert resumed.keys() == reference.keys()
    assert max(float((resumed[k] - reference[k]).abs().max()) for k in resumed) < 1e-5
    assert (run / "export" / "taskmaster.Q4_K_M.gguf").stat().st_size > 1_000_000
