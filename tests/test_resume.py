"""A seeded run killed mid-way (SIGKILL, no chance to clean up) resumes from its last complete
checkpoint and ends where an uninterrupted run with the same seed ends.

Tolerance: final train loss within 1e-5 and every adapter weight within 1e-6 (absolute) of
the uninterrupted run. The kill lands in the second epoch, after the sampler has drawn
a new order: the resumed run must replay it (the order depends only on seed and epoch), with
the same optimizer, scheduler and RNG state, so the two runs agree to float rounding.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUNNER = """
import sys
from persona_lib.dataset import load_shipped
from persona_lib.train import TrainConfig, train

config = TrainConfig.smoke(max_steps=8, save_steps=2, eval_steps=4, max_seq_length=64, batch_size=2,
                           learning_rate=5e-3, warmup_ratio=0.1)
records = load_shipped("taskmaster")[:12]  # 9 to train: 5 steps an epoch, so the kill lands in epoch 2
train(config, records[:9], sys.argv[1], eval_records=records[9:], resume=sys.argv[2] == "resume", progress=False)
"""

LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-6


def start(out: Path, mode: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(out), mode], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    return output


def adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_killed_run_resumes_and_matches_an_uninterrupted_run(tmp_path, tiny_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    ref_proc = start(reference, "fresh")
    proc = start(interrupted, "fresh")
    marker = interrupted / "checkpoints" / "checkpoint-6" / "trainer_state.json"
    deadline = time.monotonic() + 300
    while not marker.is_file():
        assert proc.poll() is None, f"the run ended before its 6th step was saved:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (interrupted / "manifest.json").exists(), "the kill came after the run had finished"
    finish(ref_proc)

    output = finish(start(interrupted, "resume"))
    assert "resuming from" in output and "checkpoint-" in output

    ref = json.loads((reference / "manifest.json").read_text())
    got = json.loads((interrupted / "manifest.json").read_text())
    assert got["resumed_from"] and ref["resumed_from"] is None
    assert got["steps"] == ref["steps"] == 8
    assert abs(got["metrics"]["train_loss"] - ref["metrics"]["train_loss"]) <= LOSS_TOLERANCE
    assert abs(got["metrics"]["eval_loss"] - ref["metrics"]["eval_loss"]) <= LOSS_TOLERANCE
    a, b = adapter_weights(reference), adapter_weights(interrupted)
    assert a.keys() == b.keys() and a
    for name in a:
        assert (a[name] - b[name]).abs().max().item() <= WEIGHT_TOLERANCE, name
    assert any(name.endswith("lora_B.weight") and a[name].abs().max() > 0 for name in a), "nothing was trained"

    # The loss log holds every step once: the history restored from the checkpoint, then the rest.
    log = [json.loads(line) for line in (interrupted / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in log if "eval_loss" in r] == [4, 8]
    assert not (interrupted / "checkpoints").exists(), "checkpoints are removed after success"


def test_resuming_with_another_config_is_refused(tmp_path, tiny_path):
    from persona_lib.train import TrainConfig, _prepare_checkpoints, _run_key

    ckpt = tmp_path / "checkpoints"
    key = _run_key(TrainConfig.smoke(), "a", "b")
    assert _prepare_checkpoints(ckpt, key, resume=True) is None
    (ckpt / "checkpoint-2").mkdir()
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (ckpt / "checkpoint-4").mkdir()  # cut by a kill while saving: no trainer_state.json
    other = _run_key(TrainConfig.smoke(learning_rate=5e-4), "a", "b")
    with pytest.raises(RuntimeError, match="learning_rate"):
        _prepare_checkpoints(ckpt, other, resume=True)
    assert not (ckpt / "checkpoint-4").exists()
    assert _prepare_checkpoints(ckpt, key, resume=True).endswith("checkpoint-2")
    assert _prepare_checkpoints(ckpt, key, resume=False) is None and not (ckpt / "checkpoint-2").exists()


def test_a_finished_run_is_loaded_again_only_with_the_same_config_and_data(tmp_path, tiny_path):
    """Run all twice in lesson 4: `reuse=True` loads the finished adapter (same config, same
    training and validation data) instead of training it again; any difference trains anew."""
    import torch
    from peft import get_peft_model_state_dict

    from persona_lib.dataset import load_shipped
    from persona_lib.train import TrainConfig, train

    config = TrainConfig.smoke(max_steps=2, eval_steps=2, max_seq_length=64, batch_size=2)
    records = load_shipped("taskmaster")[:8]
    out = tmp_path / "adapter"
    first = train(config, records[:6], out, eval_records=records[6:], resume=True, reuse=True, progress=False)
    assert not first.reused
    saved = adapter_weights(out)
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}

    again = train(config, records[:6], out, eval_records=records[6:], resume=True, reuse=True, progress=False)
    assert again.reused and again.manifest == first.manifest
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()} == written  # nothing rewritten
    loaded = get_peft_model_state_dict(again.model)
    assert loaded.keys() == saved.keys()
    assert all(torch.equal(loaded[k].float(), saved[k].float()) for k in saved)
    plain = train(config, records[:6], out, eval_records=records[6:], resume=True, progress=False)
    assert not plain.reused and plain.manifest["timings"] != first.manifest["timings"]  # reuse is asked for

    for changed in ({"eval_records": records[5:]}, {"config": TrainConfig.smoke(max_steps=3, eval_steps=2,
                                                                                max_seq_length=64, batch_size=2)}):
        kwargs = {"config": config, "eval_records": records[6:], **changed}
        run = train(kwargs.pop("config"), records[:6], out, resume=True, reuse=True, progress=False, **kwargs)
        assert not run.reused and run.manifest["timings"] != first.manifest["timings"]
    (out / "adapter_model.safetensors").unlink()  # a file the manifest lists is gone: not a finished run
    assert not train(config, records[:6], out, eval_records=records[6:], resume=True, reuse=True,
                     progress=False).reused
