"""The `persona` command.

    persona run                      # TaskMaster on the embedded model, offline
    persona run --persona zen_coder  # another shipped persona, or a path to a spec YAML
    persona run --smoke              # every stage on the tiny model, in seconds
    persona spec check FILE.yaml     # validate a spec and list every problem
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields


def _run(args: argparse.Namespace) -> int:
    from persona_lib.pipeline import RunConfig, run

    chosen = {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name) is not None}
    config = RunConfig.smoke(**chosen) if args.smoke else RunConfig(**chosen)
    start = time.perf_counter()
    results = run(config)
    print()
    print(f"{'stage':<10} {'seconds':>8}  status   output")
    for r in results:
        print(f"{r.name:<10} {r.seconds:>8.1f}  {'resumed' if r.skipped else 'ran':<7}  {r.folder}")
    print(f"total {time.perf_counter() - start:.1f} s")
    answers = results[-1].folder / "answers.md"
    print(f"\nRead the base model's answers, without and with the persona prompt: {answers}")
    return 0


def _spec_check(args: argparse.Namespace) -> int:
    from persona_lib.spec import SpecError, load_spec

    try:
        spec = load_spec(args.file)
    except SpecError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({spec.name}, {len(spec.traits)} traits)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persona", description="persona-lab: persona fine-tuning, taught and measured.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the chapter's pipeline for one persona, offline")
    p.add_argument("--persona", help="shipped slug (taskmaster, captain_codebeard, zen_coder) or a spec YAML path; default taskmaster")
    p.add_argument("--model", help="embedded (default), tiny, a Hub id or a local model folder")
    p.add_argument("--runs-root", dest="runs_root", help="where run folders go (default ./runs)")
    p.add_argument("--n-prompts", dest="n_prompts", type=int, help="held-out prompts to answer (default 5)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="reply length cap in tokens (default 120)")
    p.add_argument("--force", action="store_true", default=None, help="redo finished stages instead of resuming")
    p.add_argument("--smoke", action="store_true", help="tiny model, two prompts: checks the plumbing in seconds")
    p.set_defaults(func=_run)

    s = sub.add_parser("spec", help="persona specifications")
    s_sub = s.add_subparsers(dest="spec_command", required=True)
    c = s_sub.add_parser("check", help="validate a spec YAML and list every problem")
    c.add_argument("file")
    c.set_defaults(func=_spec_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    # The CPU path never downloads: every model comes from disk (see persona_lib.models).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
