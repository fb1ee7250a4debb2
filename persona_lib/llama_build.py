"""Build llama-cpp-python for any machine of its architecture, cache it by its flags, and prove it runs.

PyPI ships llama-cpp-python as source only, and its default build compiles llama.cpp for the
build machine's own CPU (GGML_NATIVE): a wheel built on one CPU then uses every instruction that CPU has. Built on an
AMD EPYC with AVX-512 it dies with SIGILL on a CPU without AVX-512; built on an Intel Xeon with
AMX it repacks weights into the AMX buffer type and crashes (SIGSEGV) at the first decode. So
this script never builds natively. It builds one of two profiles:

- ``portable`` (the default): x86-64-v3, the instruction set of every x86-64 server and laptop
  CPU since 2013 (Intel Haswell, AMD Zen): SSE4.2, AVX, AVX2, FMA, F16C, BMI2. AVX-512 and AMX
  are off on purpose. On other architectures: llama.cpp's generic (non-native) build.
- ``baseline``: every optional x86 extension off (plain x86-64). The fallback when a CPU lacks
  an x86-64-v3 feature, or when the runtime check below fails.

llama.cpp can also build every CPU variant as a loadable backend and pick the best at load time
(`GGML_BACKEND_DL` + `GGML_CPU_ALL_VARIANTS`). bench/bench_llama_build.py measures it against
the portable build; see its docstring and bench/results/llama_build.json for why this script
does not use it.

A wheel lives in a folder named after its version, profile and a hash of its exact CMake
arguments, with a `build.json` that records the flags, the CPU features it assumes and the CPU
it was built on, so a wheel built one way is never picked up for another.

    python -m persona_lib.llama_build wheel --sdist SDIST --cache DIR [--profile auto|portable|baseline]
        builds the wheel if its folder has none; prints the wheel's path (last line of stdout)
    python -m persona_lib.llama_build converters --sdist SDIST --cache DIR
        unpacks llama.cpp's GGUF converters from the same source into DIR/llama.cpp-<version>
    python -m persona_lib.llama_build check
        loads the embedded GGUF in a child process and decodes a few tokens: exit 0 when it
        worked; 1 when the child crashed (a signal: an illegal instruction, a segmentation
        fault) or hung, which a more conservative build may cure; 2 for any other failure
        (an import error, a missing file), which a rebuild would not. The reason is printed.

Standard library only: scripts/install.sh runs it from the repository before the virtual
environment has anything in it, and a Colab notebook runs the same code (persona_lib.colab).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

X86 = platform.machine().lower() in ("x86_64", "amd64")

# x86-64-v3 as llama.cpp's switches spell it, and the /proc/cpuinfo flags each one needs.
PORTABLE_X86 = {"GGML_SSE42": "sse4_2", "GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma",
                "GGML_F16C": "f16c", "GGML_BMI2": "bmi2"}
# Never on, whatever this CPU has: each exists on only some machines of one kind.
NEVER_X86 = ("GGML_AVX_VNNI", "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16",
             "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
PROFILES = ("portable", "baseline")


def cmake_args(profile: str) -> list[str]:
    """The CMake arguments of a profile. GGML_NATIVE=OFF first: with it on, llama.cpp compiles
    for this CPU and ignores the switches that follow."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    args = ["-DGGML_NATIVE=OFF"]
    if X86:
        on = profile == "portable"
        args += [f"-D{switch}={'ON' if on else 'OFF'}" for switch in PORTABLE_X86]
        args += [f"-D{switch}=OFF" for switch in NEVER_X86]
    return args


def assumed_features(profile: str) -> list[str]:
    """The CPU flags (as /proc/cpuinfo names them) a profile's wheel needs to run."""
    return sorted(PORTABLE_X86.values()) if X86 and profile == "portable" else []


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^(?:flags|Features)\s*:(.*)$", text, re.M)
    return set(match.group(1).split()) if match else set()


def cpu_model() -> str:
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        match = None
    return match.group(1).strip() if match else platform.processor() or platform.machine()


def choose_profile(flags: set[str]) -> str:
    """portable where the CPU has every x86-64-v3 feature, baseline otherwise."""
    return "portable" if set(assumed_features("portable")) <= flags else "baseline"


def wheel_dir(cache: Path, version: str, profile: str) -> Path:
    digest = hashlib.sha256(" ".join(cmake_args(profile)).encode()).hexdigest()[:10]
    return cache / "wheels" / f"llama_cpp_python-{version}-{profile}-{digest}"


def find_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    return wheels[0] if wheels and (folder / "build.json").is_file() else None


def build_wheel(sdist: Path, folder: Path, profile: str, args: list[str] | None = None) -> Path:
    """Build the sdist into `folder` with the profile's flags (or `args`, for a benchmark's
    other builds); the folder appears under its name only when the wheel is done."""
    args = cmake_args(profile) if args is None else args
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    env = dict(os.environ, CMAKE_ARGS=" ".join(args))
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "wheel", "--quiet", "--no-deps",
                    str(sdist), "-w", str(tmp)], env=env, check=True)
    seconds = round(time.monotonic() - start, 1)
    (tmp / "build.json").write_text(json.dumps({
        "profile": profile, "cmake_args": args,
        "assumes_cpu_flags": assumed_features(profile) if profile in PROFILES else "chosen at load time",
        "built_on": {"cpu": cpu_model(), "machine": platform.machine()}, "build_seconds": seconds,
    }, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return find_wheel(folder)


def sdist_version(sdist: Path) -> str:
    return re.match(r"llama_cpp_python-(.+)\.tar\.gz$", Path(sdist).name).group(1)


def unpack_converters(sdist: Path, cache: Path) -> Path:
    """llama.cpp's GGUF converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, gguf-py/,
    conversion/) from the llama-cpp-python source, into `cache/llama.cpp-<version>`: the
    converter that matches the runtime's GGUF format exactly. Done once; atomic."""
    dest = Path(cache) / f"llama.cpp-{sdist_version(sdist)}"
    if (dest / "convert_hf_to_gguf.py").is_file():
        return dest
    wanted = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py/", "conversion/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            _, sep, inside = member.name.partition("/vendor/llama.cpp/")
            if sep and inside.startswith(wanted) and (member.isfile() or member.isdir()):
                member.name = inside
                members.append(member)
        tar.extractall(tmp, members=members, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


# The child's work: load the embedded model and decode a few tokens. Run in a separate process
# because a wrong build does not raise, it kills the process (SIGILL, SIGSEGV).
CHECK_CODE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=1, verbose=False)
out = llm.create_completion("The capital of France is", max_tokens=6, temperature=0.0)
text = out["choices"][0]["text"]
print("decoded:", repr(text))
sys.exit(0 if out["usage"]["completion_tokens"] > 0 else 3)
"""


def describe_exit(returncode: int) -> str:
    """Say in words how a child process ended: a signal by name, with what it usually means here."""
    if returncode >= 0:
        return f"exit status {returncode}"
    name = signal.Signals(-returncode).name
    meaning = {
        "SIGILL": "an illegal instruction: the library uses an instruction this CPU does not have",
        "SIGSEGV": "a segmentation fault (seen with llama.cpp's AMX path on Intel Xeons)",
        "SIGBUS": "a bus error", "SIGABRT": "an abort inside the library",
    }.get(name, "killed by a signal")
    return f"{name}: {meaning}"


OK, CRASHED, FAILED = 0, 1, 2  # `check`'s outcomes, also its exit statuses


def check(gguf: Path, python: str = sys.executable, timeout: float = 120) -> tuple[int, str]:
    """Decode a few tokens of `gguf` with llama_cpp in a child process: (OK, CRASHED or FAILED,
    what happened in words)."""
    try:
        proc = subprocess.run([python, "-c", CHECK_CODE, str(gguf)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return CRASHED, f"the decode did not finish within {timeout:.0f} s"
    if proc.returncode == 0:
        return OK, proc.stdout.strip().splitlines()[-1]
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return (CRASHED if proc.returncode < 0 else FAILED), f"{describe_exit(proc.returncode)}; last line: {tail}"


def embedded_gguf() -> Path:
    from persona_lib.models import embedded_gguf_path

    return embedded_gguf_path()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheel", help="build (once) and print the wheel for a profile")
    w.add_argument("--sdist", type=Path, required=True)
    w.add_argument("--cache", type=Path, required=True)
    w.add_argument("--profile", default="auto", choices=("auto",) + PROFILES)
    u = sub.add_parser("converters", help="unpack llama.cpp's GGUF converters from the source")
    u.add_argument("--sdist", type=Path, required=True)
    u.add_argument("--cache", type=Path, required=True)
    c = sub.add_parser("check", help="decode a few tokens of a GGUF (default: the embedded model)")
    c.add_argument("--gguf", type=Path)
    args = parser.parse_args(argv)

    if args.command == "converters":
        print(unpack_converters(args.sdist, args.cache))
        return 0
    if args.command == "wheel":
        version = sdist_version(args.sdist)
        profile = choose_profile(cpu_flags()) if args.profile == "auto" else args.profile
        folder = wheel_dir(args.cache, version, profile)
        wheel = find_wheel(folder)
        if wheel is None:
            folder.parent.mkdir(parents=True, exist_ok=True)
            print(f"== building llama-cpp-python {version}, profile {profile} ({' '.join(cmake_args(profile))});"
                  " about 5 minutes on 2 cores", file=sys.stderr)
            wheel = build_wheel(args.sdist, folder, profile)
        print(wheel)
        return 0

    outcome, what = check(args.gguf or embedded_gguf())
    print(("llama.cpp runtime check passed: " if outcome == OK else "llama.cpp runtime check FAILED: ") + what,
          file=sys.stdout if outcome == OK else sys.stderr)
    return outcome


if __name__ == "__main__":
    sys.exit(main())
