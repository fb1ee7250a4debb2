"""`persona run` from an empty runs folder, timed stage by stage, then rerun over the finished folder.

Runs the `persona` command in a child process (as a user runs it) with a fresh --runs-root,
reads each stage's `done.json` (its seconds and summary), and times a second run over the
finished folder, which should skip every stage. The README's stage table and its `persona run`
rows come from this file's JSON.

    python bench/bench_pipeline.py                 # TaskMaster on the embedded model -> pipeline.json
    python bench/bench_pipeline.py --smoke         # every stage on the tiny model -> pipeline_smoke.json

Extra arguments after `--` go to `persona run` unchanged (e.g. `-- --persona zen_coder`).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from persona_lib.io import read_json, write_json
from persona_lib.llama_build import cpu_model

RESULTS = Path(__file__).parent / "results"


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def persona_run(args: list[str]) -> tuple[float, str]:
    """Wall seconds and the output tail of one `persona run` in a child process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "persona_lib.cli", "run", *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"persona run {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return wall, done.stdout


def stage_rows(run_folder: Path) -> dict:
    """{stage: {"seconds", "summary"}} from each finished stage's done.json, in run order."""
    rows = {}
    for done in sorted(run_folder.glob("*/done.json"), key=lambda p: p.stat().st_mtime):
        record = read_json(done)
        rows[done.parent.name] = {"seconds": round(record["seconds"], 2), "summary": record["summary"]}
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="persona run --smoke (the tiny model)")
    parser.add_argument("--runs-root", default="", help="default: a fresh temporary folder")
    parser.add_argument("--results", default="")
    parser.add_argument("extra", nargs="*", help="arguments for persona run, after --")
    args = parser.parse_args(argv)
    results = Path(args.results or RESULTS / ("pipeline_smoke.json" if args.smoke else "pipeline.json"))
    root = Path(args.runs_root or tempfile.mkdtemp(prefix="bench_pipeline_"))
    run_args = ["--runs-root", str(root), *(["--smoke"] if args.smoke else []), *args.extra]

    from bench_train_cpu import cpu_flags  # bench/ is on sys.path when this file runs as a script

    report = {"what": "persona run from an empty runs folder, then again over the finished folder",
              "command": " ".join(["bench_pipeline.py", *(argv if argv is not None else sys.argv[1:])]),
              "persona_run_args": run_args,
              "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                          "cpu_flags": cpu_flags(), "load_average_start": load_average()}}
    first_s, out = persona_run(run_args)
    folders = [p for p in root.glob("*") if p.is_dir()]
    if len(folders) != 1:
        sys.exit(f"expected one run folder under {root}, found {[p.name for p in folders]}")
    stages = stage_rows(folders[0])
    rerun_s, rerun_out = persona_run(run_args)
    skipped = rerun_out.count("already done")
    in_stages = sum(row["seconds"] for row in stages.values())
    report.update({
        "run_folder": folders[0].name,
        "wall_s": round(first_s, 2),
        "in_stages_s": round(in_stages, 2),
        "outside_stages_s": round(first_s - in_stages, 2),
        "stages": stages,
        "rerun_wall_s": round(rerun_s, 2),
        "rerun_skipped_stages": skipped,
        "output_tail": out[-2000:],
    })
    report["machine"]["load_average_end"] = load_average()
    write_json(results, report)
    for name, row in stages.items():
        print(f"{name:<10} {row['seconds']:>8.1f} s")
    print(f"wall {first_s:.0f} s ({in_stages:.0f} s in stages); rerun {rerun_s:.1f} s, "
          f"{skipped} of {len(stages)} stages skipped -> {results}")
    return 0 if skipped == len(stages) else 1


if __name__ == "__main__":
    sys.exit(main())
