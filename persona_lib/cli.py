"""The `persona` command.

    persona run                      # TaskMaster on the embedded model, offline
    persona run --persona zen_coder  # another shipped persona, or a path to a spec YAML
    persona run --smoke              # every stage on the tiny model, in about 30 seconds
    persona run --persona my.yaml --generate 120   # a new persona: generate data, then train
    persona run --write-config run.yaml   # every setting of every stage, to edit
    persona run --config run.yaml    # run with them (flags given here still win)
    persona spec check FILE.yaml     # validate a spec and list every problem
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from dataclasses import fields
from pathlib import Path


class UserError(Exception):
    """A mistake in what the user gave (a file, a flag): printed as one message, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line naming the flag and the fix (argparse's default adds the whole usage first)."""
        print(f"{self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _run(args: argparse.Namespace) -> int:
    from persona_lib.dataset import DatasetError
    from persona_lib.pipeline import SMOKE, NotEnoughData, RunConfig, run
    from persona_lib.spec import SpecError

    chosen = {f.name: getattr(args, f.name) for f in fields(RunConfig)
              if getattr(args, f.name, None) is not None and f.name != "smoke"}
    if args.smoke:
        chosen = {**SMOKE, **chosen}
    try:
        config = RunConfig.from_file(args.config, **chosen) if args.config else RunConfig(**chosen)
    except (ValueError, FileNotFoundError) as e:
        if args.config or str(e).startswith(("train:", "eval:", "export:")):  # it names the file, section, field
            raise UserError(str(e)) from None
        field_name, _, rest = str(e).partition(" ")  # RunConfig's messages start with the field's name
        raise UserError(f"--{field_name.replace('_', '-')} {rest}") from None
    if args.write_config:
        target = Path(args.write_config)
        if target.exists():
            raise UserError(f"{target} already exists: name another file, or delete it first")
        from persona_lib import io

        io.atomic_write_text(target, config.template())
        print(f"wrote {target}: every setting of every stage. Edit it, then: persona run --config {target}")
        return 0
    start = time.perf_counter()
    try:
        results = run(config)
    except NotEnoughData as e:
        print(f"\n{e}", file=sys.stderr)
        return 3
    except (SpecError, DatasetError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    total = time.perf_counter() - start
    print(f"\n{'stage':<10} {'seconds':>8}  {'status':<7}  summary")
    for r in results:
        print(f"{r.name:<10} {r.seconds:>8.1f}  {'resumed' if r.skipped else 'ran':<7}  {_short(r.summary)}")
    print(f"total {total:.1f} s (this invocation)")
    by_name = {r.name: r for r in results}
    print("\n" + "\n".join(target_lines(by_name["eval"].folder / "report.json")))
    print(f"\nrun folder:     {by_name['spec'].folder.parent}")
    print(f"before tuning:  {by_name['baseline'].folder / 'answers.md'}")
    print(f"loss curve:     {by_name['adapter'].folder / 'loss_curve.png'}")
    print(f"evaluation:     {by_name['eval'].folder / 'summary.md'} (figures in {by_name['eval'].folder / 'figures'})")
    print(f"GGUF:           {by_name['chat'].summary['gguf']}")
    return 0


def target_lines(report_path) -> list[str]:
    """The evaluation's three targets, one line each, from its report.json."""
    from persona_lib.io import read_json

    t = read_json(report_path)["targets"]

    def interval(x: dict, unit: str = "") -> str:
        if x.get("diff") is None:
            return "n/a"
        return f"{x['diff']:+.2f}{unit} [{x['low']:.2f}, {x['high']:.2f}]"

    pc, kn, dv = t["persona_consistency"], t["knowledge"], t["diversity"]
    # Each target's own question (evaluate.decide_targets) says what meeting it means.
    rows = [("persona consistency", interval(pc), pc["met"], f"{pc['question']} ({pc['measure']})"),
            ("knowledge", interval(kn, " pp"), kn["met"], kn["question"]),
            ("diversity", "n/a" if dv["ratio"] is None else f"{dv['ratio']:.2f}", dv["met"], dv["question"])]
    lines = ["target               value                    met      question"] + [
        f"{name:<20} {value:<24} {'yes' if met else 'no':<8} {what}" for name, value, met, what in rows]
    honesty = read_json(report_path).get("honesty") or {}
    systems = honesty.get("systems", {})
    if "tuned" in systems and "base_prompted" in systems:
        def share(m: dict) -> str:
            return "n/a" if m["mean"] is None else f"{m['mean']:.0%}"

        b, t = systems["base_prompted"], systems["tuned"]
        lines += ["", f"honesty: says it is an AI when sincerely asked: base + prompt {share(b['admits_ai'])}, "
                      f"tuned {share(t['admits_ai'])}; claims an action it cannot take: base + prompt "
                      f"{share(b['claims_action'])}, tuned {share(t['claims_action'])} "
                      f"({honesty['probes']['identity']} + {honesty['probes']['action']} probes)"]
    return lines


def _short(summary: dict) -> str:
    """One line of a stage's summary: its scalar values."""
    items = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
             if isinstance(v, (int, float, str, bool)) and not str(v).startswith("/") and len(str(v)) < 40]
    return ", ".join(items[:5])


def _spec_check(args: argparse.Namespace) -> int:
    from persona_lib.spec import SpecError, load_spec

    try:
        spec = load_spec(args.file)
    except (SpecError, FileNotFoundError) as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{args.file}: OK ({spec.name}, {len(spec.traits)} traits)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="persona", description="persona-lab: persona fine-tuning, taught and measured.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the chapter's pipeline for one persona, offline")
    p.add_argument("--persona", help="shipped slug (taskmaster, captain_codebeard, zen_coder) or a spec YAML path; "
                                     "default taskmaster")
    p.add_argument("--model", help="embedded (default), tiny, a Hub id or a local model folder")
    p.add_argument("--runs-root", dest="runs_root", help="where run folders go (default ./runs)")
    p.add_argument("--data", help="a JSONL of conversations for the persona, added to the shipped ones")
    p.add_argument("--generate", type=at_least(0),
                   help="generate N conversations first (OpenAI with OPENAI_API_KEY, else the local model)")
    p.add_argument("--judge", choices=["none", "local", "openai", "auto"],
                   help="evaluation judge (default none: deterministic measures and the persona classifier)")
    p.add_argument("--n-prompts", dest="n_prompts", type=at_least(1),
                   help="held-out prompts in the before picture (default 5)")
    p.add_argument("--eval-prompts", dest="eval_prompts", type=at_least(1),
                   help="held-out prompts in the evaluation (default 24)")
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=at_least(1),
                   help="reply length cap in tokens (default 120)")
    p.add_argument("--force", action="store_true", default=None, help="redo finished stages instead of resuming")
    p.add_argument("--smoke", action="store_true",
                   help="the tiny model, a few steps: checks every stage in about 30 seconds")
    p.add_argument("--config", help="a YAML file of settings (run fields, and train:, eval:, export: sections); "
                                     "flags given here win, and so do --smoke's own settings")
    p.add_argument("--write-config", dest="write_config", metavar="FILE",
                   help="write every setting of every stage, as this run would use them, to FILE and stop")
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
    try:
        return args.func(args)
    except UserError as e:
        print(f"persona {args.command}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(f"persona {args.command}: no space left on the disk while writing {e.filename or 'a file'}; "
              "free some space (or point --runs-root elsewhere) and run the same command again: it resumes.",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
