"""The Colab side: the release the notebooks install, the GPU stack, and Drive for run folders.

Every notebook's first code cell is the same install cell (`INSTALL_CELL`, checked by
tests/test_notebooks.py). In Colab it pip-installs persona-lab from its git tag, which brings
the shared pins of requirements.txt (pip leaves alone whatever Colab already has at those
versions), then calls `install_gpu_stack()`. Outside Colab it does nothing: there you ran
`bash scripts/install.sh` once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

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
# unsloth 2026.10.9 declares torch>=2.4.0,<2.15.0.
UNSLOTH_TORCH_MIN = (2, 4)
UNSLOTH_TORCH_BELOW = (2, 15)


def badge_url(notebook: str) -> str:
    """The 'Open in Colab' link of `notebooks/<notebook>` at the release tag."""
    return f"https://colab.research.google.com/github/{REPO}/blob/{RELEASE_TAG}/notebooks/{notebook}"


def badge_markdown(notebook: str) -> str:
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({badge_url(notebook)})"


INSTALL_CELL = f"""\
# Install (identical in every notebook). In Colab: persona-lab at its release tag, with the
# pinned libraries and, on a GPU, Unsloth. Elsewhere: nothing; run `bash scripts/install.sh`.
import os, subprocess, sys
PERSONA_LAB_TAG = "{RELEASE_TAG}"
if "COLAB_RELEASE_TAG" in os.environ:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    f"persona-lab @ git+{REPO_URL}@{{PERSONA_LAB_TAG}}"], check=True)
    from persona_lib.colab import install_gpu_stack
    install_gpu_stack()"""


def in_colab() -> bool:
    return "COLAB_RELEASE_TAG" in os.environ


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


def install_gpu_stack() -> None:
    """Install Unsloth without touching Colab's torch; a no-op without a CUDA GPU."""
    import torch

    if not torch.cuda.is_available():
        print("No GPU in this runtime: the notebooks run on the CPU path (Runtime > Change runtime type > T4 GPU for Unsloth).")
        return
    if not torch_version_ok(torch.__version__):
        raise RuntimeError(
            f"This runtime has torch {torch.__version__}, outside unsloth 2026.10.9's range "
            f"(>= {'.'.join(map(str, UNSLOTH_TORCH_MIN))}, < {'.'.join(map(str, UNSLOTH_TORCH_BELOW))}). "
            "Installing unsloth would replace Colab's torch and force a restart. Use a runtime "
            f"with a torch in range, or open an issue at {REPO_URL} with this message."
        )
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if todo := missing(UNSLOTH_NO_DEPS):
        subprocess.run(pip + ["--no-deps", *todo], check=True)
    if todo := missing(UNSLOTH_WITH_DEPS):
        subprocess.run(pip + todo, check=True)
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

    drive.mount("/content/drive")
    root = Path("/content/drive/MyDrive") / folder
    root.mkdir(parents=True, exist_ok=True)
    os.environ["PERSONA_LAB_RUNS"] = str(root)
    return root
