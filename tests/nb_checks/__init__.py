"""What each notebook must have written: `nb_NN.py` defines `check(run_folder)` and
`check_skill(run_folder)`. The CPU lane (tests/test_notebooks.py) and the Colab-shaped lane
(tests/test_colab_lane.py) both run them."""

import importlib
from pathlib import Path


def checks_for(notebook: Path):
    """The check module of `notebook` (NN_name.ipynb -> nb_checks/nb_NN.py)."""
    path = Path(__file__).parent / f"nb_{notebook.name[:2]}.py"
    assert path.is_file(), f"{notebook.name} needs a check of what it writes: tests/nb_checks/{path.name}"
    return importlib.import_module(f"nb_checks.{path.stem}")
