"""bench/rehearse_gpu.py without a GPU: its dry run takes the harness through lessons 4 and 5
(T4 stand-in in the kernel, metrics cell, report), and a plain run refuses cleanly."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "rehearse_gpu.py"


def test_the_t4_stand_in_answers_as_a_t4(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from rehearse_gpu import SITECUSTOMIZE

    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    probe = ("import torch; p = torch.cuda.get_device_properties(0); "
             "print(torch.cuda.get_device_capability(), p.major, p.minor, p.name, round(p.total_memory / 1024**3))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PERSONA_LAB_AS_T4": "7.5"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["(7,", "5)", "7", "5", "Tesla", "T4", "15"]
    env.pop("PERSONA_LAB_AS_T4")  # without the switch, nothing is faked
    plain = subprocess.run([sys.executable, "-c", "import torch; torch.cuda.get_device_capability()"], env=env,
                           capture_output=True, text=True)
    assert plain.returncode != 0


def test_dry_run_rehearses_lessons_4_and_5_and_writes_the_report(tmp_path):
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--lessons", "04", "05", "--results", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    lessons = report["models"]["tiny"]["lessons"]
    assert set(lessons) == {"04", "05"} and all(r["error"] is None for r in lessons.values())
    assert all(r["capability_seen"] == [7, 5] and 0 < r["peak_ram_gb"] < 32 for r in lessons.values())
    trained = report["models"]["tiny"]["training"]["taskmaster/adapter"]
    assert trained["steps"] == 6 and trained["seconds_per_step"] > 0


def test_without_a_gpu_a_real_rehearsal_refuses_with_a_message():
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "no CUDA GPU" in done.stderr and "--dry-run" in done.stderr
