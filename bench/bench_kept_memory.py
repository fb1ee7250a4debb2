"""Peak memory and time of a CPU training with and without `TrainConfig.cpu_keep_memory`.

Each setting trains in a fresh process (the peak resident memory, ru_maxrss, is per process):
TrainConfig.cpu() on the embedded model for --steps updates of a persona's shipped training
split, without validation passes. Writes the train() time, the tokens/s in steps and the peak.

    python bench/bench_kept_memory.py --persona captain_codebeard --steps 16   # -> kept_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from persona_lib.io import write_json
from persona_lib.llama_build import cpu_model

RESULTS = Path(__file__).parent / "results"

ONE_RUN = """
import json, resource, sys, tempfile
from persona_lib.dataset import shipped_splits
from persona_lib.train import TrainConfig, train
keep, steps, persona = sys.argv[1] == "1", int(sys.argv[2]), sys.argv[3]
splits = shipped_splits(persona)
config = TrainConfig.cpu(max_steps=steps, cpu_keep_memory=keep, eval_steps=0)
result = train(config, splits["train"], tempfile.mkdtemp(), eval_records=splits["validation"], progress=False)
print(json.dumps({"cpu_keep_memory": keep, "train_s": result.manifest["timings"]["train_s"],
                  "tokens_per_second_in_steps": result.manifest["throughput"]["tokens_per_second_in_steps"],
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persona", default="captain_codebeard")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--results", default=str(RESULTS / "kept_memory.json"))
    args = parser.parse_args(argv)
    runs = []
    for keep in (False, True):
        out = subprocess.run([sys.executable, "-c", ONE_RUN, "1" if keep else "0", str(args.steps), args.persona],
                             capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(runs[-1], flush=True)
    write_json(args.results, {"what": __doc__.splitlines()[0], "persona": args.persona, "steps": args.steps,
                              "cpu": cpu_model(), "runs": runs,
                              "peak_ratio": round(runs[1]["peak_rss_gb"] / runs[0]["peak_rss_gb"], 2),
                              "speed_ratio": round(runs[0]["train_s"] / runs[1]["train_s"], 2)})
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
