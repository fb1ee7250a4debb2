"""Where things live: shipped data, caches and run folders."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def data_dir() -> Path:
    """The shipped `persona_data` folder (package data, so it works from a pip install too)."""
    return Path(str(files("persona_data")))


def specs_dir() -> Path:
    return data_dir() / "specs"


def eval_dir() -> Path:
    return data_dir() / "eval"


def cache_dir() -> Path:
    """Per-user cache (converted models, llama.cpp converter scripts); PERSONA_LAB_CACHE overrides."""
    root = os.environ.get("PERSONA_LAB_CACHE") or Path.home() / ".cache" / "persona-lab"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def runs_root() -> Path:
    """Root of run folders: PERSONA_LAB_RUNS, else ./runs (on Colab, point it at Drive)."""
    return Path(os.environ.get("PERSONA_LAB_RUNS", "runs"))


def run_dir(persona: str, root: str | os.PathLike | None = None) -> Path:
    path = Path(root) if root is not None else runs_root()
    path = path / persona
    path.mkdir(parents=True, exist_ok=True)
    return path
