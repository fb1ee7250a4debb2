"""Memory and speed of a CPU training under each way of handing memory back, each in a fresh process.

TrainConfig.cpu() on the embedded model for --steps updates of a persona's shipped training
split, without validation passes, under each of --settings:

- ``default``: glibc's malloc as it comes (blocks over 32 MB mapped on their own and unmapped
  when freed, the heap trimmed beyond 64 MB);
- ``kept``: TrainConfig.cpu_keep_memory (trainer.kept_memory: nothing unmapped or trimmed while
  train() runs);
- ``thp``: PyTorch's own THP_MEM_ALLOC_ENABLE=1 (page-aligned tensors, transparent huge pages
  asked for on every block of 2 MB or more), which PyTorch's CPU tuning guide suggests; it has
  to be set before the process's first tensor, hence a process per setting;
- ``default_whole_loss`` and ``kept_whole_loss``: the same with the LM head and loss over all of a
  batch's labelled positions at once, as before trainer.LOSS_CHUNK_BYTES chunked them.

Each run records, after every update, the process's resident memory, the size of glibc's heap
and the minor page faults so far (memory the kernel mapped and zeroed for it); the JSON holds
those traces, the peak resident memory (ru_maxrss), the train() time and tokens/s in steps;
the traces are drawn beside it (.png).

    python bench/bench_kept_memory.py --persona captain_codebeard --steps 40   # -> kept_memory.json, .png
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from persona_lib.io import write_json
from persona_lib.llama_build import cpu_model
from persona_lib.plots import memory_traces

RESULTS = Path(__file__).parent / "results"
SETTINGS = ("default", "kept", "thp", "default_whole_loss", "kept_whole_loss")


class MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (malloc.h): `arena` is the heap's size, `uordblks` what is in use."""
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]


def one_run(setting: str, steps: int, persona: str) -> dict:
    """Trains in this process under `setting` and returns its figures (the `--one` mode)."""
    from bench_train_cpu import minor_faults, peak_rss_gb, step_timer  # bench/ is on sys.path when run as a script
    from transformers import TrainerCallback

    import persona_lib.train as train_module
    from persona_lib.dataset import shipped_splits
    from persona_lib.trainer import WHOLE_LOSS

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    page = os.sysconf("SC_PAGE_SIZE")
    trace = []

    class Trace(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            resident = int(Path("/proc/self/statm").read_text().split()[1]) * page
            trace.append({"step": state.global_step, "resident_gb": round(resident / 2**30, 2),
                          "heap_gb": round(libc.mallinfo2().arena / 2**30, 2), "page_faults": minor_faults()})

    if setting.endswith("_whole_loss"):
        build = train_module.build_trainer

        def whole_loss(*args, **kwargs):
            trainer = build(*args, **kwargs)
            trainer.loss_chunk_rows = WHOLE_LOSS
            return trainer

        train_module.build_trainer = whole_loss
    splits = shipped_splits(persona)
    config = train_module.TrainConfig.cpu(max_steps=steps, cpu_keep_memory=setting.startswith("kept"), eval_steps=0)
    timer = step_timer()
    result = train_module.train(config, splits["train"], tempfile.mkdtemp(), eval_records=splits["validation"],
                                progress=False, callbacks=[timer, Trace()])
    return {"setting": setting, "train_s": result.manifest["timings"]["train_s"],
            "tokens_per_second_in_steps": result.manifest["throughput"]["tokens_per_second_in_steps"],
            "peak_rss_gb": peak_rss_gb(), "heap_gb_at_end": trace[-1]["heap_gb"],
            "page_faults_per_step": timer.page_faults_per_step(),
            "trace": trace}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona", default="captain_codebeard")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--settings", default="default,kept", help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--results", default=str(RESULTS / "kept_memory.json"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: run one setting, print its JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_run(args.one, args.steps, args.persona)))
        return 0
    settings = args.settings.split(",")
    if unknown := [s for s in settings if s not in SETTINGS]:
        parser.error(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    runs = []
    for setting in settings:
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": "1" if setting == "thp" else "0"}
        out = subprocess.run([sys.executable, __file__, "--one", setting, "--steps", str(args.steps),
                              "--persona", args.persona], capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(f"{setting}: the training process failed:\n{out.stderr[-3000:]}")
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print({k: v for k, v in runs[-1].items() if k != "trace"}, flush=True)
    first = runs[0]
    for run in runs:
        run["speed_vs_first"] = round(first["train_s"] / run["train_s"], 2)
        run["peak_vs_first"] = round(run["peak_rss_gb"] / first["peak_rss_gb"], 2)
    write_json(args.results, {"what": __doc__.splitlines()[0], "persona": args.persona, "steps": args.steps,
                              "cpu": cpu_model(), "runs": runs})
    figure = Path(args.results).with_suffix(".png")
    memory_traces({run["setting"]: run["trace"] for run in runs},
                  title=f"{args.persona}: {args.steps} updates, each setting in a fresh process", path=figure)
    print(f"wrote {args.results} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
