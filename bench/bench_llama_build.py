"""Portable llama.cpp build versus runtime CPU dispatch: build time and speed, side by side in one run.

`scripts/install.sh` must build llama-cpp-python for any x86-64 machine, never for the one it
runs on. Two ways exist:

- **portable**: one CPU backend compiled for x86-64-v3 (AVX2, FMA, F16C, BMI2; no AVX-512, no
  AMX), what `persona_lib/llama_build.py` builds;
- **dispatch**: llama.cpp's `GGML_BACKEND_DL` + `GGML_CPU_ALL_VARIANTS`, every x86 variant of the
  CPU backend (plain x86-64 up to Sapphire Rapids with AMX) built as a loadable library, the
  best one this CPU supports chosen at load time.

This builds both wheels (the portable one is reused from the install cache when present, with
the build time it recorded), then measures the embedded SmolLM2-135M GGUF in each: prompt
processing and generation tokens/s, alternating the builds for `--rounds` rounds in fresh
processes, best round each. For the dispatch build it also runs the decode check once per
variant library, each loaded alone, so every instruction-set path this CPU can run (AVX-512
on and off) is proved; the variants it cannot run are listed as such.

    python bench/bench_llama_build.py     # about 15 minutes on 2 cores when nothing is cached

What it found on a 2-core AMD EPYC with AVX-512 and AVX512-BF16 (bench/results/llama_build.json):
the dispatch build took 494 s against 276 s (1.79x) and chose its zen4 variant (AVX-512, VNNI,
BF16), yet ran the embedded model at the portable build's speed (prompt 0.99x, generation
1.02x, best of 3 rounds each; the same 64 greedy tokens): a 135M model in Q4_1 is bound by
memory, not by vector width. Every variant this CPU can run decoded correctly loaded alone
(plain x86-64 up to zen4); alderlake (AVX-VNNI) and sapphirerapids (AMX) are refused by ggml
here. The dispatch build would also need its variant libraries placed where ggml looks (next
to the Python executable or in the working directory; llama-cpp-python installs them nowhere
it searches), and on an Intel Xeon with AMX it would choose the AMX variant, the path that
crashed. So the install builds the portable profile.

Writes bench/results/llama_build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from persona_lib import llama_build

ROOT = Path(__file__).resolve().parent.parent

DISPATCH_ARGS = ["-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON"]

# The child: load the GGUF, time prompt processing of `n_prompt` tokens and `n_gen` greedy decode
# steps, print JSON. Run in a fresh process per measurement so each build loads its own libraries.
MEASURE_CODE = r"""
import json, sys, time
import llama_cpp
from llama_cpp import Llama
gguf, n_threads, n_prompt, n_gen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=gguf, n_ctx=1024, n_batch=512, n_threads=n_threads, verbose=False)
text = open(sys.argv[5]).read()
tokens = llm.tokenize(text.encode())[:n_prompt]
assert len(tokens) == n_prompt, len(tokens)
llm.reset(); llm.eval(tokens[:32])  # warm-up
llm.reset()
t = time.perf_counter(); llm.eval(tokens); pp = time.perf_counter() - t
out = []
t = time.perf_counter()
for _ in range(n_gen):
    token = llm.sample(temp=0.0)
    out.append(token)
    llm.eval([token])
tg = time.perf_counter() - t
print(json.dumps({"prompt_tokens_per_s": n_prompt / pp, "gen_tokens_per_s": n_gen / tg,
                  "greedy_tokens": out, "system_info": llama_cpp.llama_print_system_info().decode()}))
"""


def ensure_wheel(sdist: Path, cache: Path, name: str, args: list[str]) -> tuple[Path, dict, bool]:
    """(wheel, its build.json, built in this run) for `args`, cached like llama_build's wheels."""
    version = llama_build.sdist_version(sdist)
    if name == "portable":
        folder = llama_build.wheel_dir(cache, version, "portable")
    else:
        import hashlib

        folder = cache / "wheels" / (f"llama_cpp_python-{version}-{name}-"
                                     f"{hashlib.sha256(' '.join(args).encode()).hexdigest()[:10]}")
    wheel = llama_build.find_wheel(folder)
    built = wheel is None
    if built:
        folder.parent.mkdir(parents=True, exist_ok=True)
        print(f"building the {name} wheel ({' '.join(args)})", flush=True)
        wheel = llama_build.build_wheel(sdist, folder, name, args)
    return wheel, json.loads((folder / "build.json").read_text()), built


def unpack(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as z:
        z.extractall(into)
    return into


def measure(site: Path, cwd: Path, gguf: Path, text: Path, threads: int, n_prompt: int, n_gen: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", MEASURE_CODE, str(gguf), str(threads), str(n_prompt), str(n_gen),
                           str(text)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"{llama_build.describe_exit(proc.returncode)}: {last[-300:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("PERSONA_LAB_CACHE",
                                                                          Path.home() / ".cache" / "persona-lab")))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "llama_build.json")
    args = parser.parse_args(argv)

    from persona_lib import io
    from persona_lib.models import embedded_gguf_path

    version = next(line.split("==")[1].strip() for line in (ROOT / "requirements-cpu.txt").read_text().splitlines()
                   if line.startswith("llama-cpp-python=="))
    sdist = args.cache / "sdist" / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        raise SystemExit(f"{sdist} is missing: run `bash scripts/install.sh` first (it fetches the source).")
    gguf = embedded_gguf_path()
    builds = {"portable": llama_build.cmake_args("portable"), "dispatch": DISPATCH_ARGS}
    work = Path(tempfile.mkdtemp(prefix="bench_llama_build."))
    text = work / "prompt.txt"
    records = [json.loads(line) for line in (ROOT / "persona_data" / "taskmaster.jsonl").read_text().splitlines()[:40]]
    text.write_text("\n\n".join(m["content"] for r in records for m in r["messages"]))

    report = {"cpu": llama_build.cpu_model(), "machine": platform.machine(),
              "cpu_flags": sorted(f for f in llama_build.cpu_flags()
                                  if re.match(r"(avx|amx|fma|f16c|bmi2|sse4)", f)),
              "llama_cpp_python": version, "threads": args.threads, "prompt_tokens": args.prompt_tokens,
              "gen_tokens": args.gen_tokens, "rounds": args.rounds, "builds": {}}
    sites = {}
    for name, cmake in builds.items():
        wheel, meta, built = ensure_wheel(sdist, args.cache, name, cmake)
        site = unpack(wheel, work / name)
        libs = sorted(p.name for p in site.rglob("libggml-cpu*.so"))
        report["builds"][name] = {"cmake_args": cmake, "build_seconds": meta["build_seconds"],
                                  "built_in_this_run": built, "built_on": meta["built_on"]["cpu"],
                                  "wheel_mb": round(wheel.stat().st_size / 2**20, 1), "cpu_backend_libraries": libs,
                                  "runs": []}
        # A dispatch build's variant libraries are found next to the executable or in the
        # working directory (llama-cpp-python installs them nowhere it looks): run from their folder.
        variant_dir = next((p.parent for p in site.rglob("libggml-cpu-*.so")), site)
        sites[name] = (site, variant_dir)

    for r in range(args.rounds):
        for name, (site, cwd) in sites.items():
            result = measure(site, cwd, gguf, text, args.threads, args.prompt_tokens, args.gen_tokens)
            print(f"round {r + 1} {name}: " + (result.get("error") or
                  f"pp {result['prompt_tokens_per_s']:.0f} tok/s, "
                  f"tg {result['gen_tokens_per_s']:.1f} tok/s"), flush=True)
            report["builds"][name]["runs"].append(result)

    for name, entry in report["builds"].items():
        ok = [run for run in entry["runs"] if "error" not in run]
        if ok:
            entry["best_prompt_tokens_per_s"] = round(max(run["prompt_tokens_per_s"] for run in ok), 1)
            entry["best_gen_tokens_per_s"] = round(max(run["gen_tokens_per_s"] for run in ok), 1)
            entry["system_info"] = ok[0]["system_info"]
            entry["greedy_tokens"] = ok[0]["greedy_tokens"]
        for run in entry["runs"]:
            run.pop("greedy_tokens", None)
            run.pop("system_info", None)
    p, d = report["builds"]["portable"], report["builds"]["dispatch"]
    if "best_prompt_tokens_per_s" in p and "best_prompt_tokens_per_s" in d:
        report["dispatch_over_portable"] = {
            "build_seconds": round(d["build_seconds"] / p["build_seconds"], 2),
            "prompt_tokens_per_s": round(d["best_prompt_tokens_per_s"] / p["best_prompt_tokens_per_s"], 2),
            "gen_tokens_per_s": round(d["best_gen_tokens_per_s"] / p["best_gen_tokens_per_s"], 2),
            "same_greedy_tokens": sum(a == b for a, b in zip(p["greedy_tokens"], d["greedy_tokens"])),
        }

    # Every variant of the dispatch build, loaded alone: which this CPU runs, and that each decodes.
    site, variant_dir = sites["dispatch"]
    variants = {}
    for lib in sorted(variant_dir.glob("libggml-cpu-*.so")):
        alone = work / "variant" / lib.stem
        alone.mkdir(parents=True)
        (alone / lib.name).symlink_to(lib)
        result = measure(site, alone, gguf, text, args.threads, 64, 8)
        # ggml scores each variant against this CPU and refuses one that needs an instruction it
        # lacks, so the model then finds no CPU backend: "not runnable here", not a crash.
        variants[lib.stem.removeprefix("libggml-cpu-")] = (
            f"decodes: {result['system_info'].split('CPU : ')[-1].strip(' |')}" if "error" not in result else
            f"not runnable on this CPU (ggml refused the variant; {result['error']})"
            if result["error"].startswith("exit status") else f"CRASHED: {result['error']}")
        print(lib.stem, "->", variants[lib.stem.removeprefix("libggml-cpu-")][:160], flush=True)
    report["dispatch_variants_loaded_alone"] = variants
    io.write_json(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
