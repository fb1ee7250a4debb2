"""Build notebooks/NN_name.ipynb from notebooks/src/NN_name.py (percent format).

The .py sources are what people review and edit; the .ipynb files are what Colab opens.
This script adds what every notebook shares, so it is written once: the Colab badge at the
release tag, the install cell (persona_lib.colab.install_cell), the `parameters` tag for
papermill, Colab metadata (T4 GPU), and no outputs. tests/test_notebooks.py fails when a
committed notebook differs from what this script builds.

    python scripts/build_notebooks.py          # rebuild every notebook
    python scripts/build_notebooks.py --check  # exit 1 if any notebook is stale

Source format: cells start with `# %%` (code) or `# %% [markdown]` (markdown lines are
comments); `# %% parameters` is the tagged parameters cell; `# %% install [NEED ...]` stands
for the install cell with what the lesson needs beyond the library (persona_lib.colab.NEEDS).

Why not jupytext: it would parse the same percent format, but the install-cell expansion, the
badge, the parameters tag, the metadata and the stable cell ids would still be written here,
so it would add a dependency while saving only the 30-line `parse`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from persona_lib.colab import badge_markdown, install_cell

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "notebooks" / "src"
OUT = ROOT / "notebooks"

METADATA = {
    "accelerator": "GPU",
    "colab": {"gpuType": "T4", "provenance": []},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def _cell(kind: str, lines: list[str], tags: list[str] | None = None) -> dict:
    while lines and not lines[-1].strip():
        lines.pop()
    text = "\n".join(lines)
    cell = {"cell_type": kind, "metadata": {"tags": tags} if tags else {}, "source": text.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def parse(source: str, notebook_name: str) -> list[dict]:
    cells: list[dict] = []
    header, lines, needs = None, [], []

    def flush():
        if header is None:
            return
        if header == "install":
            cells.append(_cell("code", install_cell(needs).splitlines()))
        elif header == "markdown":
            text = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines]
            if not any(c["cell_type"] == "markdown" for c in cells):
                text = [badge_markdown(notebook_name), "", *text]
            cells.append(_cell("markdown", text))
        else:
            cells.append(_cell("code", list(lines), ["parameters"] if header == "parameters" else None))

    for line in source.splitlines():
        if line.startswith("# %%"):
            flush()
            rest = line[4:].strip()
            if rest.startswith("install"):
                rest, needs = "install", rest.split()[1:]
            header = {"[markdown]": "markdown", "parameters": "parameters", "install": "install", "": "code"}[rest]
            lines = []
        else:
            lines.append(line)
    flush()
    return cells


def build(src: Path) -> str:
    name = src.stem + ".ipynb"
    notebook = {"cells": parse(src.read_text(encoding="utf-8"), name), "metadata": METADATA, "nbformat": 4,
                "nbformat_minor": 5}
    for i, cell in enumerate(notebook["cells"]):
        cell["id"] = f"{src.stem[:2]}-{i:02d}"
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale notebooks instead of writing")
    args = parser.parse_args()
    stale = []
    for src in sorted(SRC.glob("[0-9][0-9]_*.py")):
        target = OUT / (src.stem + ".ipynb")
        text = build(src)
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            continue
        stale.append(target.name)
        if not args.check:
            target.write_text(text, encoding="utf-8")
    verb = "stale" if args.check else "rebuilt"
    print(f"{verb}: {', '.join(stale) or 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
