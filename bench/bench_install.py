"""How long `bash scripts/install.sh --dev` takes: first with an empty persona-lab cache (the
llama.cpp wheel is built), then again in another fresh clone with that cache filled.

Each install runs in its own clone of this repository's HEAD (as a new user's clone), with
PERSONA_LAB_CACHE pointing at a fresh folder that the second install reuses; pip's own
download cache is left as it is (packages come from the registry either way). The times of the
install's own steps are read from its output ("== step" lines and the seconds it prints).

    python bench/bench_install.py             # -> bench/results/install.json (about 8 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from persona_lib.io import write_json

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"


def install(clone: Path, cache: Path) -> dict:
    """Wall seconds, the output's step lines, and the build seconds the install reported."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "PERSONA_LAB_CACHE": str(cache)}
    env.pop("PERSONA_LAB_VENV", None)
    start = time.perf_counter()
    done = subprocess.run(["bash", "scripts/install.sh", "--dev"], cwd=clone, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    out = done.stdout + done.stderr
    if done.returncode:
        sys.exit(f"install.sh failed in {clone} (exit {done.returncode}):\n{out[-3000:]}")
    return {"wall_s": round(wall, 1), "steps": [line for line in out.splitlines() if line.startswith("==")],
            "seconds_printed": [float(s) for s in re.findall(r"(\d+(?:\.\d+)?) s\b", out)][-5:],
            "output_tail": out[-1500:]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS / "install.json"))
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_install_"))
    cache = work / "cache"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = {"what": "bash scripts/install.sh --dev in a fresh clone: empty persona-lab cache, then filled",
              "commit": commit, "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                            "load_average_start": [round(x, 2) for x in os.getloadavg()]}}
    report["empty_cache"] = install(work / "first", cache)
    print(f"empty cache: {report['empty_cache']['wall_s']:.0f} s")
    report["filled_cache"] = install(work / "second", cache)
    print(f"filled cache: {report['filled_cache']['wall_s']:.0f} s")
    report["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(args.results, report)
    print(f"-> {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
