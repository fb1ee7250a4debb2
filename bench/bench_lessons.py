"""The chapter as a learner without a GPU or an API key runs it: each lesson's notebook top to
bottom (Run all), in order, in one fresh run folder, on this machine's CPU, timed.

Every notebook runs with its parameters as shipped (SMOKE off: the embedded SmolLM2-135M, the
lesson's real sizes), OPENAI_API_KEY removed, so lesson 3 generates through the local llama.cpp
server and lesson 5 judges with the local 135M judge. Per lesson the JSON holds the wall time,
the slowest cells (papermill's own per-cell durations, with each cell's first line) and this
machine's matmul rates before and after (bench_train_cpu's reading: a shared host can be slow
for a while, and the rates say whether it was). The lesson headers' CPU times come from here.

    python bench/bench_lessons.py                      # all seven (lesson 6's trainings alone take 68 min)
    python bench/bench_lessons.py --lessons 1,2,3,4,5,7   # without lesson 6's four trainings
                                                       # (bench_multi.py --train-only times those alone)
    python bench/bench_lessons.py --lessons 1,2,3,4,7 --again   # then Run all each one a second time

`--again` runs the same lessons a second time, in order, over the folder the first pass left
(a learner who comes back and clicks Run all again): what each lesson reuses shows as the
second time against the first, measured side by side in one run (`again`, `again_vs_first`).

Writes bench/results/lessons_cpu.json; the executed notebooks stay in the run folder's
`executed/` for reading (they are outputs: never commit them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from persona_lib.io import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def slowest_cells(executed: Path, top: int = 3) -> list[dict]:
    """The `top` slowest code cells of an executed notebook: papermill's duration and the cell's
    first line that is not a comment."""
    cells = [c for c in json.loads(executed.read_text())["cells"] if c["cell_type"] == "code"]
    rows = []
    for index, cell in enumerate(cells):
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        first = next((line for line in source.splitlines() if line.strip() and not line.startswith("#")), "")
        rows.append({"cell": index, "seconds": round(cell["metadata"].get("papermill", {}).get("duration") or 0.0, 1),
                     "first_line": first[:100]})
    return sorted(rows, key=lambda r: -r["seconds"])[:top]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lessons", default="1,2,3,4,5,6,7", help="lesson numbers, run in this order")
    parser.add_argument("--runs", default="", help="run folder root (default: a fresh temporary folder)")
    parser.add_argument("--results", default=str(RESULTS / "lessons_cpu.json"))
    parser.add_argument("--again", action="store_true", help="then run the same lessons a second time, in order")
    args = parser.parse_args(argv)

    import papermill
    import torch

    # bench/ is on sys.path when this file runs as a script
    from bench_train_cpu import cpu_flags, matmul_rates, rates_before_after

    from persona_lib.llama_build import cpu_model

    try:
        wanted = [int(n) for n in args.lessons.split(",")]
    except ValueError:
        parser.error(f"--lessons takes numbers like 1,2,4, got {args.lessons!r}")
    notebooks = {int(p.name[:2]): p for p in sorted((ROOT / "notebooks").glob("0*.ipynb"))}
    if unknown := [n for n in wanted if n not in notebooks]:
        parser.error(f"no lesson {unknown}: the notebooks are {sorted(notebooks)}")
    if torch.cuda.is_available():
        parser.error("this measures the CPU path; a CUDA GPU would change every lesson's model")
    os.environ.pop("OPENAI_API_KEY", None)  # the kernel inherits this environment: the offline path
    runs = Path(args.runs or tempfile.mkdtemp(prefix="bench_lessons_"))
    executed_dir = runs / "executed"
    executed_dir.mkdir(parents=True, exist_ok=True)

    report: dict = {
        "what": "each lesson's notebook run top to bottom with its shipped parameters on the CPU path "
                "(embedded SmolLM2-135M, no API key), in order, in one run folder",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average_start": [round(x, 2) for x in os.getloadavg()]},
        "runs": str(runs),
        "lessons": {},
    }
    passes = [("lessons", "")] + ([("again", ".again")] if args.again else [])
    for key, suffix in passes:
        report[key] = {}
        for number in wanted:
            nb = notebooks[number]
            executed = executed_dir / f"{nb.stem}{suffix}.ipynb"
            before = matmul_rates()
            start = time.perf_counter()
            error = None
            try:
                papermill.execute_notebook(str(nb), str(executed), parameters={"RUNS_ROOT": str(runs)},
                                           cwd=str(runs), progress_bar=False, kernel_name="python3")
            except papermill.PapermillExecutionError as exc:  # record it and go on: later lessons fall back
                error = f"{exc.ename}: {exc.evalue}"[:500]
            seconds = time.perf_counter() - start
            after = matmul_rates()
            row = {"notebook": nb.name, "seconds": round(seconds, 1), "minutes": round(seconds / 60, 1),
                   "error": error, "slowest_cells": slowest_cells(executed),
                   "matmul_gflops": rates_before_after(before, after)}
            report[key][str(number)] = row
            print(f"{'again: ' if suffix else ''}lesson {number}: {row['minutes']} min"
                  + (f"  FAILED {error}" if error else ""), flush=True)
            write_json(Path(args.results), report)  # after every lesson: a stopped run keeps what it measured

    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    for key, _ in passes:
        report[f"total_minutes{'_again' if key == 'again' else ''}"] = round(
            sum(r["seconds"] for r in report[key].values()) / 60, 1)
    if args.again:
        report["again_vs_first"] = {  # None where either pass failed: a ratio of a failure means nothing
            n: None if report["again"][n]["error"] or row["error"] else
            round(report["again"][n]["seconds"] / row["seconds"], 3) for n, row in report["lessons"].items()}
    write_json(Path(args.results), report)
    print(f"{len(wanted)} lessons: {report['total_minutes']} min"
          + (f", a second Run all {report['total_minutes_again']} min" if args.again else "") + f" -> {args.results}")
    return 1 if any(r["error"] for key, _ in passes for r in report[key].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
