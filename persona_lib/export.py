"""From a persona adapter to a local model: merge, GGUF, quantize, verify, Ollama Modelfile.

    result = export("runs/taskmaster/adapter", "runs/taskmaster/export")   # every step, resumable

The steps, each usable on its own (notebook 07 walks through them one by one):

1. `merge_adapter`: fold the LoRA adapter into its base and save a normal HF folder with the
   tokenizer and chat template used in training (fp32 on CPU, fp16 on a GPU).
2. `convert_to_gguf`: llama.cpp's own `convert_hf_to_gguf.py`, the copy that ships with the
   pinned llama-cpp-python (unpacked by scripts/install.sh), run with *its* `gguf-py`, not the
   pip `gguf` package, so converter and runtime agree on the format. f16 output.
3. `quantize_gguf`: llama.cpp's quantizer through `llama_cpp.llama_model_quantize` (Q4_K_M,
   Q8_0, ...). `tensor_types` then reads what the file really holds: k-quants work on blocks
   of 256 values, so a tensor whose rows are not a multiple of 256 falls back to another type
   (the tiny test model's 64-wide rows never become Q4_K; SmolLM2-135M's 576-wide ones neither).
4. `convert_lora`: the adapter as a GGUF LoRA (`convert_lora_to_gguf.py --base`), so one base
   GGUF carries every persona; `llama_runtime.PersonaAdapters` switches between them in llama.cpp.
5. Verification in llama.cpp: `llama_runtime.chat_check` (the GGUF ends a reply at the
   end-of-turn token), `parity.export_parity` (the same held-out prompts, greedy, through the HF model, the f16 GGUF and
   the quantized GGUF: the f16 step separates template or tokenizer faults from quantization
   loss).
6. `ollama.modelfile`: an Ollama Modelfile whose TEMPLATE is the training chat template in Go
   template syntax, checked by tests/test_export.py against the tokenizer, the GGUF's own
   template and Go's real text/template.

Every output is written under a temporary name and renamed when complete, so an interrupted
export never leaves a broken file under a final name, and a rerun skips finished files.
Before each heavy step the free disk and memory are checked against what the step needs.
On Colab, `export_unsloth` is the shortcut through Unsloth's own GGUF export, and
`push_to_hub` is one way to get the file out of the runtime (the run folder on Drive is the
other).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Iterator, Sequence

from persona_lib import adapters, io
from persona_lib.config import Settings
from persona_lib.llama_runtime import ExportError, chat_check, default_threads, load_gguf
from persona_lib.models import load_tokenizer
from persona_lib.ollama import modelfile, ollama_commands
from persona_lib.parity import export_parity
from persona_lib.paths import cache_dir

# llama_ftype names accepted by `quantize_gguf`, with bits per weight for the disk estimate
# (llama.cpp's quantize tool lists these sizes; a real file differs by the fallbacks).
QUANT_BITS = {"F16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.7, "Q4_K_M": 4.89, "Q4_0": 4.5}

# The question of the chat check: an everyday TaskMaster request.
CHECK_QUESTION = [{"role": "user", "content": "I have three deadlines this week. Where do I start?"}]


@dataclass
class ExportConfig(Settings):
    quants: tuple[str, ...] = ("Q4_K_M", "Q8_0")  # Q4_K_M: the usual laptop file; Q8_0: near-lossless reference
    merge_dtype: str = "auto"  # auto: float16 on a GPU, float32 on CPU (this CPU has no fast half precision)
    lora: bool = True  # also write the adapter as a GGUF LoRA over a base GGUF (the multi-persona form)
    parity_prompts: int = 8  # held-out prompts for export parity; the benchmark uses 40+
    max_new_tokens: int = 64  # greedy tokens per parity reply: enough for the voice to show or not
    temperature: float = 0.3  # Modelfile default: a small model drifts out of voice at high temperature
    num_ctx: int = 2048  # Modelfile context: persona chats are short, and more context costs laptop memory
    n_ctx: int = 2048  # llama.cpp context for the checks here
    force: bool = False  # redo finished steps instead of resuming

    def __post_init__(self):
        self.quants = tuple(self.quants)
        unknown = [q for q in self.quants if q not in QUANT_BITS]
        if unknown or not self.quants:
            raise ValueError(f"quants must be a non-empty subset of {', '.join(QUANT_BITS)}, got {list(self.quants)}")
        if self.merge_dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"merge_dtype must be auto, float32, float16 or bfloat16, not {self.merge_dtype!r}")
        if self.parity_prompts < 1 or self.max_new_tokens < 1:
            raise ValueError("parity_prompts and max_new_tokens must be at least 1")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be within 0..2, got {self.temperature}")
        if self.num_ctx < 256 or self.n_ctx < 256:
            raise ValueError("num_ctx and n_ctx must be at least 256 tokens")

    @classmethod
    def smoke(cls, **overrides) -> "ExportConfig":
        """Every step on the tiny model in seconds: one quant, two prompts, eight tokens."""
        return cls(**{"quants": ("Q4_K_M",), "parity_prompts": 2, "max_new_tokens": 8, "n_ctx": 512, **overrides})


# ----------------------------------------------------------------------------- files and resources


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def work_dir(run: str | os.PathLike) -> Path:
    """Where lesson 7 writes: `<run>/export`, except on Colab. There the run folder is on Google
    Drive (15 GB free) while a 3B model's merge, f16 GGUF and two quantized files take about
    25 GB: they go to the runtime's local disk, and `keep` copies what the learner keeps to Drive."""
    from persona_lib.colab import LOCAL_DISK, in_colab

    run = Path(run)
    return Path(LOCAL_DISK) / "export" / run.name if in_colab() else run / "export"


def _same_copy(src: Path, copy: Path) -> bool:
    """`copy` holds what `src` holds, by the quick check rsync makes: the same size and, since
    `keep` gives each copy its source's modification time, the same time (within 2 s: Drive
    keeps whole seconds). A source made again after a runtime reset has a new time."""
    if not copy.is_file():
        return False
    a, b = src.stat(), copy.stat()
    return a.st_size == b.st_size and abs(a.st_mtime - b.st_mtime) < 2


def _copy_with_progress(src: Path, dest: Path, chunk: int = 16 << 20) -> None:
    from tqdm.auto import tqdm

    size = src.stat().st_size
    with src.open("rb") as fin, dest.open("wb") as fout, \
            tqdm(total=size, unit="B", unit_scale=True, desc=f"copying {src.name}", disable=size < 64 << 20) as bar:
        while block := fin.read(chunk):
            fout.write(block)
            bar.update(len(block))
    with contextlib.suppress(OSError):  # a file system that keeps no times copies again next time
        os.utime(dest, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns))


def keep(files: Sequence[str | os.PathLike], dest: str | os.PathLike) -> list[Path]:
    """Copy `files` into `dest` (each atomically, after checking the disk there, with a progress
    bar for large ones). A file already in `dest`, or copied there before and unchanged since,
    is not copied again: on Colab a rerun of lesson 7 would otherwise write the 2 GB Q4_K_M file
    to Drive each time. Returns the kept paths."""
    dest = Path(dest)
    files = [Path(f) for f in files]
    elsewhere = [f for f in files if f.parent.resolve() != dest.resolve()]
    todo = [f for f in elsewhere if not _same_copy(f, dest / f.name)]
    if todo:
        check_resources("keep", dest, disk=1.05 * sum(size_of(f) for f in todo))
    for f in todo:
        with io.atomic_output(dest / f.name) as tmp:
            _copy_with_progress(f, tmp)
    if len(todo) < len(elsewhere):
        print(f"copied before and unchanged since: {', '.join(f.name for f in elsewhere if f not in todo)}")
    return [dest / f.name for f in files]


def size_of(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a folder."""
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def stale(final: str | os.PathLike, inputs: dict | None = None) -> str | None:
    """Why `final` must be made (again), or None when it is there and was made from `inputs`
    (as recorded beside it in `<name>.inputs.json`; without `inputs`, being there is enough)."""
    final = Path(final)
    if not final.exists():
        return "not made yet"
    if inputs is None:
        return None
    record = final.with_name(f"{final.name}.inputs.json")
    before = io.read_json(record) if record.is_file() else {}
    now = json.loads(json.dumps(inputs, default=str))
    changed = sorted(k for k in now.keys() | before.keys() if before.get(k) != now.get(k))
    return f"made from other inputs ({', '.join(changed)} changed)" if changed else None


def once(final: str | os.PathLike, make, *, inputs: dict | None = None, force: bool = False) -> Path:
    """`make(final)` unless `final` already exists and was made from the same `inputs`.

    Outputs appear only when complete, so an existing one is finished, and an interrupted
    export resumes at the step it was in. `inputs` says what `make` reads (`io.identity` of its
    files, its settings); it is recorded beside the output, and an output made from other
    inputs (a retrained adapter, another dtype) is made again, and so is everything after it,
    since its own identity then changes."""
    final = Path(final)
    why = "force=True" if force else stale(final, inputs)
    if why is None:
        print(f"{final.name}: already there, skipping (force=True redoes it)")
        return final
    if final.exists():
        print(f"{final.name}: {why}: making it again")
    record = final.with_name(f"{final.name}.inputs.json")
    record.unlink(missing_ok=True)  # no record may vouch for an output that is being replaced
    make(final)
    if inputs is not None:
        io.write_json(record, json.loads(json.dumps(inputs, default=str)))
    return final


def parity_once(out_dir: str | os.PathLike, merged: str | os.PathLike, ggufs: dict[str, str | os.PathLike],
                prompts: Sequence[dict], phrases: Sequence[str], config: ExportConfig, *,
                progress: bool = True) -> dict:
    """`export_parity` of `merged` against `ggufs` on `prompts` (held-out prompts: id and
    messages), written to `parity.jsonl` (each prompt's replies) and `parity.json` (the report,
    returned). A rerun reads the report back while the model files, the prompts, the phrases,
    the settings and llama.cpp are unchanged: on Colab's 2 vCPUs the GGUF side of it takes
    minutes for a 3B model."""
    out_dir = Path(out_dir)
    replies = out_dir / "parity.jsonl"

    def measure(path: Path) -> None:
        report = export_parity(merged, ggufs, [p["messages"] for p in prompts], phrases,
                               ids=[p["id"] for p in prompts], max_new_tokens=config.max_new_tokens,
                               n_ctx=config.n_ctx, progress=progress)
        io.write_jsonl(replies, report.pop("rows"))
        io.write_json(path, report)

    import torch

    inputs = {"merged": io.identity(merged), "ggufs": {name: io.identity(p) for name, p in ggufs.items()},
              "prompts": io.canonical_sha256([[p["id"], p["messages"]] for p in prompts]), "phrases": list(phrases),
              "max_new_tokens": config.max_new_tokens, "n_ctx": config.n_ctx, "llama_cpp": llama_cpp_version(),
              "hf_on": "cuda" if torch.cuda.is_available() else "cpu"}  # fp16 on a GPU, fp32 on a CPU
    if not replies.is_file():
        (out_dir / "parity.json").unlink(missing_ok=True)  # the report goes with its replies
    return io.read_json(once(out_dir / "parity.json", measure, inputs=inputs))


def param_count(folder: str | os.PathLike) -> int:
    """Parameters in a HF folder, read from the safetensors headers (no weights loaded)."""
    total = 0
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ExportError(f"{folder} has no *.safetensors weights: is it a Hugging Face model folder?")
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for d in entry["shape"]:
                    count *= d
                total += count
    return total


def check_resources(step: str, where: str | os.PathLike, *, disk: float, memory: float = 0) -> dict:
    """Say what `step` needs (bytes of free disk under `where`, bytes of memory) and what is
    there; raise ExportError with the fix when either falls short."""
    import psutil

    where = Path(where)
    probe = where
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    available = psutil.virtual_memory().available
    line = (f"[{step}] needs about {_gb(disk)} of disk in {where} ({_gb(free)} free) "
            f"and {_gb(memory)} of memory ({_gb(available)} available)")
    print(line)
    if free < disk:
        raise ExportError(f"{line}: not enough disk. Free space there, or export to a larger disk (on Colab "
                          "the runtime's own /content has far more room than Drive's free 15 GB)")
    if available < memory:
        raise ExportError(f"{line}: not enough memory. Close other notebooks or runtimes, or run this step "
                          "on a machine with more memory (Colab: Runtime > Change runtime type)")
    return {"disk_needed": int(disk), "disk_free": int(free), "memory_needed": int(memory),
            "memory_available": int(available)}


# ----------------------------------------------------------------------------- llama.cpp's scripts


def llama_cpp_version() -> str:
    return metadata.version("llama-cpp-python")


def converter_dir() -> Path:
    """llama.cpp's converter scripts for the installed llama-cpp-python, unpacked at install time."""
    path = cache_dir() / f"llama.cpp-{llama_cpp_version()}"
    if not (path / "convert_hf_to_gguf.py").is_file() or not (path / "gguf-py" / "gguf").is_dir():
        raise ExportError(f"llama.cpp's GGUF converter is missing from {path}. Run `bash scripts/install.sh` "
                          "(on Colab, the notebook's install cell): it unpacks convert_hf_to_gguf.py, "
                          "convert_lora_to_gguf.py, gguf-py/ and conversion/ from the llama-cpp-python source "
                          "distribution")
    return path


def converter_env() -> dict:
    """The environment the converter runs in: its own gguf-py first on the import path, so the
    pip `gguf` package (another version) is never the one it writes with."""
    env = dict(os.environ)
    gguf_py = str(converter_dir() / "gguf-py")
    env["PYTHONPATH"] = os.pathsep.join([gguf_py, env["PYTHONPATH"]]) if env.get("PYTHONPATH") else gguf_py
    env.setdefault("HF_HUB_OFFLINE", "1")  # the converter needs nothing from the Hub: the folder is local
    return env


def _run_script(script: str, args: Sequence[str], log: Path) -> None:
    """Run one of llama.cpp's scripts; its output goes to `log`, and a failure shows its tail."""
    cmd = [sys.executable, str(converter_dir() / script), *map(str, args)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        code = subprocess.run(cmd, env=converter_env(), stdout=out, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise ExportError(f"{script} failed (exit code {code}); full log: {log}\n{tail}")


def _check_gguf(path: Path) -> int:
    """The tensor count in a GGUF header; raises when the file is not GGUF or holds no tensors.
    (Reading the whole file is `tensor_types`' job: it takes seconds, for the vocabulary.)"""
    with path.open("rb") as f:
        header = f.read(16)
    if len(header) < 16 or header[:4] != b"GGUF":
        raise ExportError(f"{path} is not a GGUF file (it does not start with the GGUF header)")
    (n_tensors,) = struct.unpack("<Q", header[8:16])
    if n_tensors == 0:
        raise ExportError(f"{path} holds no tensors")
    return n_tensors


# ----------------------------------------------------------------------------- merge


def _byte_level_tokenizer_json(folder: Path) -> dict | None:
    """The tokenizer.json of `folder` made readable as byte-level BPE by llama.cpp's converter,
    or None when it needs no change.

    transformers builds SmolLM2's tokenizer from a GGUF file as BPE with SentencePiece's byte
    fallback and a '▁'-replacing decoder. From that flag llama.cpp's converter writes a
    SentencePiece vocabulary, which crashes llama.cpp at the first space. A byte-level BPE
    never falls back to bytes (every byte is a token), so dropping the flag and using the
    plain ByteLevel decoder, as in SmolLM2's own tokenizer.json, changes no token; the
    converter then recognises the pre-tokenizer (`smollm`) and writes a GPT-2 vocabulary.
    """
    path = folder / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    pre = json.dumps(data.get("pre_tokenizer"))
    if data["model"].get("type") != "BPE" or not data["model"].get("byte_fallback") or '"ByteLevel"' not in pre:
        return None
    data["model"]["byte_fallback"] = False
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    return data


@contextlib.contextmanager
def _converter_view(hf_dir: Path, beside: Path) -> Iterator[Path]:
    """`hf_dir` as the converter should read it: itself, or, when its tokenizer.json needs the
    byte-level repair, a temporary folder of links to its files with a repaired tokenizer.json
    (the model folder itself, maybe a shared cache, is never changed)."""
    data = _byte_level_tokenizer_json(hf_dir)
    if data is None:
        yield hf_dir
        return
    view = beside.with_name(f".{beside.name}.source")
    io.remove(view)
    view.mkdir(parents=True)
    try:
        for entry in hf_dir.iterdir():
            if entry.name != "tokenizer.json":
                (view / entry.name).symlink_to(entry.resolve())
        (view / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        yield view
    finally:
        io.remove(view)


def model_dir(model_id: str) -> Path:
    """A local folder for a model id: the persona-lab names and folders as they are, a Hub id
    from the Hugging Face cache (downloading it when allowed, as from_pretrained would)."""
    from persona_lib.models import resolve

    path = Path(resolve(model_id))
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))


def base_model_dir(adapter_dir: str | os.PathLike) -> Path:
    """The local folder of the base model an adapter was trained on."""
    return model_dir(adapters.base_model(adapter_dir))


def merge_adapter(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, *, dtype: str = "auto",
                  base: str | None = None) -> Path:
    """The adapter folded into its base, saved as a normal HF folder at `out_dir` with the
    tokenizer (and chat template) saved beside the adapter, else the base's.

    `dtype` auto: float16 on a GPU, float32 on CPU. The folder appears only when complete.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base_dir = model_dir(base) if base else base_model_dir(adapter_dir)
    cuda = torch.cuda.is_available()
    dtype = ("float16" if cuda else "float32") if dtype == "auto" else dtype
    n = param_count(base_dir)
    width = 2 if dtype in ("float16", "bfloat16") else 4
    # Memory: the base in the chosen dtype plus a transient copy while saving (on a GPU, only
    # the shards passing through on their way to the card); disk: one copy.
    check_resources("merge", out_dir.parent, disk=1.1 * n * width, memory=(0.3 if cuda else 2.2) * n * width)
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    with io.atomic_output(out_dir) as tmp:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=getattr(torch, dtype),
                                                     device_map="cuda" if cuda else None)
        model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        model.save_pretrained(tmp)
        load_tokenizer(tokenizer_dir).save_pretrained(tmp)
        if (repaired := _byte_level_tokenizer_json(tmp)) is not None:
            io.atomic_write_text(tmp / "tokenizer.json", json.dumps(repaired, ensure_ascii=False))
        del model
    return out_dir


def pick_adapter(folder: str | os.PathLike, model_id: str, *, quick_dir: str | os.PathLike | None = None,
                 seed: int = 0) -> tuple[Path, bool]:
    """(adapter folder, trained?): the adapter in `folder` when it was trained on `model_id`, or
    the newest one trained on it beside `folder` (`<folder>-<hash>`); otherwise, given
    `quick_dir`, a quick random adapter made there (smoke runs); otherwise an error saying
    which lesson trains it."""
    folder = Path(folder)
    if adapters.trained_on(folder, model_id):
        return folder, True
    # Lesson 6 trains beside an adapter of another base (lesson 4 on a T4, lesson 6 on a CPU
    # runtime) in `<folder>-<hash>`; the newest one for this base stands in.
    beside = sorted((p for p in folder.parent.glob(f"{folder.name}-*")
                     if (p / "manifest.json").is_file() and adapters.trained_on(p, model_id)),
                    key=lambda p: (p / "manifest.json").stat().st_mtime)
    if beside:
        print(f"{folder} holds no adapter trained on {model_id}: using {beside[-1]}, trained beside it")
        return beside[-1], True
    if quick_dir is None:
        raise ExportError(f"no adapter trained on {model_id} in {folder}: train it first (lesson 4, or "
                          "`persona run`), or point to another adapter folder")
    # std 0.3: on the random tiny model, adapters this strong give visibly different replies.
    return once(quick_dir, lambda p: adapters.placeholder(p, model_id, seed=seed, std=0.3)), False


def persona_loras(runs_root: str | os.PathLike, model_id: str, out_dir: str | os.PathLike, *,
                  personas: Sequence[str] = ("taskmaster", "captain_codebeard", "zen_coder"),
                  quick: bool = False) -> dict[str, Path]:
    """Each persona's adapter (`<runs_root>/<slug>/adapter`, trained on `model_id`) as a GGUF
    LoRA in `out_dir`. Without a trained adapter a persona is left out, or, with `quick`
    (smoke runs), gets a quick random one. Prints where each came from."""
    runs_root, out_dir = Path(runs_root), Path(out_dir)
    loras = {}
    for i, slug in enumerate(personas):
        folder = runs_root / slug / "adapter"
        try:
            folder, trained = pick_adapter(folder, model_id, seed=i + 1,
                                           quick_dir=out_dir / "quick_adapters" / slug if quick else None)
        except ExportError:
            print(f"{slug:<18} left out: no adapter trained on {model_id} in {folder} (lesson 6 trains one)")
            continue
        loras[slug] = once(out_dir / f"{slug}.lora.gguf", lambda p: convert_lora(folder, p),
                           inputs={"adapter": adapters.identity(folder)})
        print(f"{slug:<18} {size_of(loras[slug]) / 1e6:6.2f} MB from {'its trained' if trained else 'a QUICK RANDOM'} "
              f"adapter {folder}")
    return loras


# ----------------------------------------------------------------------------- GGUF


def convert_to_gguf(hf_dir: str | os.PathLike, out_path: str | os.PathLike, *, outtype: str = "f16") -> Path:
    """llama.cpp's convert_hf_to_gguf.py on a HF folder; the file appears only when complete."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    n = param_count(hf_dir)
    # The converter streams tensors lazily; a few of the largest in flight, counted as one copy.
    check_resources(f"convert {hf_dir.name} -> {out_path.name}", out_path.parent, disk=1.1 * n * 2, memory=n * 2)
    with io.atomic_output(out_path) as tmp, _converter_view(hf_dir, out_path) as source:
        args = [source, "--outfile", tmp, "--outtype", outtype, "--model-name", hf_dir.name]
        _run_script("convert_hf_to_gguf.py", args, out_path.parent / "logs" / f"{out_path.name}.log")
        _check_gguf(tmp)
    return out_path


def quantize_gguf(src: str | os.PathLike, out_path: str | os.PathLike, quant: str = "Q4_K_M", *,
                  threads: int | None = None) -> Path:
    """llama.cpp's quantizer (`llama_model_quantize`) from an f16 GGUF to `quant`."""
    import llama_cpp

    src, out_path = Path(src), Path(out_path)
    if quant not in QUANT_BITS:
        raise ValueError(f"quant must be one of {', '.join(QUANT_BITS)}, not {quant!r}")
    n_bytes = src.stat().st_size
    check_resources(f"quantize {src.name} -> {quant}", out_path.parent, disk=1.1 * n_bytes * QUANT_BITS[quant] / 16,
                    memory=n_bytes)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.nthread = threads or default_threads()
    # llama.cpp prints a line per tensor, and a warning per fallback; `tensor_types` reports both.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with io.atomic_output(out_path) as tmp:
            code = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
            if code != 0:
                raise ExportError(f"llama_model_quantize({src} -> {quant}) failed with code {code}")
            _check_gguf(tmp)
    finally:
        log.setLevel(level)
    return out_path


def convert_lora(adapter_dir: str | os.PathLike, out_path: str | os.PathLike, *,
                 base_dir: str | os.PathLike | None = None) -> Path:
    """A PEFT adapter as a GGUF LoRA (convert_lora_to_gguf.py --base), f16."""
    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    base_dir = Path(base_dir) if base_dir else base_model_dir(adapter_dir)
    n_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    check_resources(f"convert {adapter_dir.parent.name}/{adapter_dir.name} -> {out_path.name}", out_path.parent,
                    disk=1.1 * n_bytes, memory=2 * n_bytes)
    with io.atomic_output(out_path) as tmp:
        _run_script("convert_lora_to_gguf.py", ["--base", base_dir, "--outfile", tmp, "--outtype", "f16", adapter_dir],
                    out_path.parent / "logs" / f"{out_path.name}.log")
        _check_gguf(tmp)
    return out_path


def tensor_types(path: str | os.PathLike) -> dict:
    """What a GGUF file really holds: its declared file type, and tensors and bytes per type.

    {"file_type": "Q4_K_M", "tensors": {"Q5_0": 12, ...}, "bytes": {"Q5_0": 43648, ...}}
    """
    from collections import Counter

    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))
    field_ = reader.fields["general.file_type"]
    file_type = LlamaFileType(int(field_.parts[field_.data[0]][0])).name
    count, size = Counter(), Counter()
    for t in reader.tensors:
        count[t.tensor_type.name] += 1
        size[t.tensor_type.name] += int(t.n_bytes)
    return {"file_type": file_type.removeprefix("MOSTLY_"), "tensors": dict(count.most_common()),
            "bytes": dict(size.most_common())}


# ----------------------------------------------------------------------------- the whole export


def export(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, config: ExportConfig | None = None, *,
           spec=None, progress: bool = True) -> dict:
    """Adapter -> merged HF folder -> f16 GGUF -> quantized GGUFs (+ GGUF LoRA over a base
    GGUF), verified in llama.cpp, with an Ollama Modelfile; writes `export.json` in `out_dir`
    and returns the same record.

    Resumes: a finished file is kept and its step skipped (config.force redoes every step).
    `spec`: the persona (a PersonaSpec or slug) for the parity prompts and signature phrases;
    default: the slug of the run folder the adapter sits in (<runs>/<slug>/adapter).
    """
    from persona_lib.dataset import heldout_prompts
    from persona_lib.spec import PersonaSpec, load_spec

    config = config or ExportConfig()
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    spec = spec if isinstance(spec, PersonaSpec) else load_spec(spec or adapter_dir.parent.name)
    slug = spec.slug
    out_dir.mkdir(parents=True, exist_ok=True)
    steps: dict[str, dict] = {}

    def step(name: str, final: Path, make, **inputs) -> Path:
        start, skipped = time.perf_counter(), not config.force and stale(final, inputs) is None
        once(final, make, inputs=inputs, force=config.force)
        seconds = round(time.perf_counter() - start, 2)
        steps[name] = {"path": final.name, "bytes": size_of(final), "seconds": None if skipped else seconds,
                       "skipped": skipped}
        if not skipped:
            print(f"[{name}] {final.name}: {_gb(steps[name]['bytes'])} in {seconds:.1f} s")
        return final

    merged = step("merge", out_dir / "merged", lambda p: merge_adapter(adapter_dir, p, dtype=config.merge_dtype),
                  adapter=adapters.identity(adapter_dir), dtype=config.merge_dtype)
    f16 = step("f16", out_dir / f"{slug}.f16.gguf", lambda p: convert_to_gguf(merged, p), merged=io.identity(merged))
    quantized = {q: step(q, out_dir / f"{slug}.{q}.gguf", lambda p, q=q: quantize_gguf(f16, p, q),
                         f16=io.identity(f16), quant=q) for q in config.quants}
    if config.lora:
        base_dir = base_model_dir(adapter_dir)
        base_f16 = step("base_f16", out_dir / "base.f16.gguf", lambda p: convert_to_gguf(base_dir, p),
                        base=io.identity(base_dir))
        lora = step("lora", out_dir / f"{slug}.lora.gguf", lambda p: convert_lora(adapter_dir, p, base_dir=base_dir),
                    adapter=adapters.identity(adapter_dir), base=io.identity(base_dir))
    for name, path in [("f16", f16), *quantized.items()]:
        steps[name]["tensor_types"] = tensor_types(path)

    main_quant = config.quants[0]
    llm = load_gguf(quantized[main_quant], n_ctx=config.n_ctx)
    check = chat_check(llm, CHECK_QUESTION, max_tokens=config.max_new_tokens)
    llm.close()

    parity = parity_once(out_dir, merged, {"f16": f16, main_quant: quantized[main_quant]},
                         heldout_prompts(spec, config.parity_prompts), spec.signature_vocabulary, config,
                         progress=progress)

    tokenizer = load_tokenizer(merged)
    files = {"Modelfile": modelfile(quantized[main_quant].name, tokenizer, temperature=config.temperature,
                                    num_ctx=config.num_ctx, title=f"{spec.name}, merged and quantized ({main_quant})")}
    if config.lora:
        files["Modelfile.adapter"] = modelfile(base_f16.name, tokenizer, adapter=lora.name,
                                               temperature=config.temperature, num_ctx=config.num_ctx,
                                               title=f"{spec.name} as a LoRA adapter over the base model")
    for name, text in files.items():
        io.atomic_write_text(out_dir / name, text)

    record = {
        "persona": slug,
        "adapter": str(adapter_dir),
        "base": adapters.base_model(adapter_dir),
        "llama_cpp_python": llama_cpp_version(),
        "config": config.to_dict(),
        "steps": steps,
        "chat_check": check,
        "parity": parity,
        "modelfiles": list(files),
        "ollama": ollama_commands(slug),
    }
    io.write_json(out_dir / "export.json", record)
    return record


# ----------------------------------------------------------------------------- Colab


def export_unsloth(model, tokenizer, out_dir: str | os.PathLike, quants: Sequence[str] = ("Q4_K_M",)) -> list[Path]:
    """Colab with Unsloth: `save_pretrained_gguf` merges in 16-bit and runs llama.cpp's own
    converter and quantizer (building llama.cpp in the runtime the first time, several
    minutes). Returns the GGUF files it wrote."""
    result = model.save_pretrained_gguf(str(out_dir), tokenizer, quantization_method=[q.lower() for q in quants])
    return [Path(p) for p in result["gguf_files"]]


def push_to_hub(files: Sequence[str | os.PathLike], repo_id: str, *, token: str | None = None,
                private: bool = True) -> str:
    """Upload GGUF files and Modelfiles to a Hugging Face model repo (created private if
    missing) with the learner's token; returns the repo URL. The other way out of Colab:
    the run folder on Drive, downloaded from drive.google.com."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    for f in files:
        api.upload_file(path_or_fileobj=str(f), path_in_repo=Path(f).name, repo_id=repo_id)
    return f"https://huggingface.co/{repo_id}"
