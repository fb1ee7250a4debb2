"""Notebooks: built from their sources, stripped, one install cell, real persona_lib names,
and every one executed in smoke mode on CPU with checks on what it wrote."""

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from nb_checks import checks_for

from persona_lib import colab

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def cells(path: Path, kind: str = "code") -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_every_lesson_has_a_notebook_named_by_number():
    assert NOTEBOOKS, "no notebooks found"
    for nb in NOTEBOOKS:
        assert (ROOT / "notebooks" / "src" / (nb.stem + ".py")).is_file(), f"{nb.name} has no source"


def test_notebooks_are_built_from_their_sources():
    result = subprocess.run([sys.executable, "scripts/build_notebooks.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"run `python scripts/build_notebooks.py`: {result.stdout}"


def test_readme_lists_every_notebook_with_its_badge():
    readme = (ROOT / "README.md").read_text()
    missing = [nb.name for nb in NOTEBOOKS if colab.badge_markdown(nb.name) not in readme]
    assert not missing, f"README.md has no Colab badge for {missing}"


def test_lesson_2_states_the_shipped_files_own_figures():
    """'What a good result looks like' in lesson 2 quotes the shipped data: recomputed here, so a
    change to the data that moves a figure fails until the lesson says the new one."""
    from persona_lib import dataset, models
    from persona_lib.spec import load_spec

    spec = load_spec("taskmaster")
    records = dataset.load_shipped("taskmaster")
    stats = dataset.dataset_stats(records, tokenizer=models.load_tokenizer("embedded"),
                                  signature_vocabulary={spec.slug: spec.signature_vocabulary})
    trainable, reserved = dataset.split_reserved(records)
    splits = dataset.split_records(trainable, seed=0)
    replies = [m["content"] for r in records for m in r["messages"] if m["role"] == "assistant"]
    text = " ".join(line.lstrip("# ") for line in (ROOT / "notebooks" / "src" / "02_dataset_design.py").read_text()
                    .split("## What a good result looks like")[1].split("# %%")[0].splitlines())
    length = stats["example_length"]
    for stated in (f"{stats['conversations']} conversations with {stats['replies']} replies",
                   f"{stats['multi_turn_share']:.0%} multi-turn", f"{len(stats['topics'])} topics",
                   f"median {length['p50']:.0f}", f"95th percentile {length['p95']:.0f}", f"longest {length['max']}",
                   f"distinct-2 over the replies {dataset.distinct_n(replies, 2):.2f}",
                   f"{len(reserved)} reserved",
                   f"{len(splits['train'])} train, {len(splits['validation'])} validation, "
                   f"{len(splits['test'])} test"):
        assert stated in text, f"lesson 2 should say {stated!r}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped_and_colab_ready(nb):
    data = json.loads(nb.read_text())
    for cell in data["cells"]:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, f"{nb.name} has outputs"
    assert data["metadata"]["colab"]["gpuType"] == "T4"
    first = source(cells(nb, "markdown")[0])
    assert colab.badge_url(nb.name) in first, "the badge must open this notebook at the release tag"
    code = cells(nb)
    needs = ast.literal_eval(re.search(r"^NEEDS = (\[.*\])$", source(code[0]), re.M).group(1))
    assert source(code[0]) == colab.install_cell(needs), "the install cell must be the shared one, first"
    assert sum(source(c).startswith("# Install.") for c in code) == 1
    params = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1 and "SMOKE = False" in source(params[0])
    assert "if False" not in "".join(source(c) for c in code)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_uses_only_existing_persona_lib_names(nb):
    for cell in cells(nb):
        tree = ast.parse(source(cell))
        modules = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("persona_lib"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        importlib.import_module(f"{node.module}.{alias.name}")  # a submodule
                    else:
                        modules[alias.asname or alias.name] = getattr(module, alias.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
                owner = modules[node.value.id]
                if isinstance(owner, type(sys)):
                    assert hasattr(owner, node.attr), f"{nb.name}: {node.value.id}.{node.attr} does not exist"


def top_level_bindings(tree: ast.AST):
    """Names a cell binds in the notebook's namespace: assignments, loop and `with` targets, not
    names local to functions, lambdas or comprehensions."""
    scoped = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef,
              ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store):
                yield child.id
            elif not isinstance(child, scoped):
                stack.append(child)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_never_rebinds_an_imported_name(nb):
    """A cell that rebinds a module it imported (`parity = parity.export_parity(...)`) works on
    Run all and fails when the learner runs that cell, or the notebook, a second time."""
    trees = [ast.parse(source(cell)) for cell in cells(nb)]
    imported = {alias.asname or alias.name.split(".")[0] for tree in trees for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
    rebound = sorted(imported & {name for tree in trees for name in top_level_bindings(tree)})
    assert not rebound, f"{nb.name} rebinds imported names: {rebound}"


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory):
    """One run folder for all notebooks, executed in lesson order, as a learner runs them.
    Each notebook must also run alone (falling back to shipped data): `-k 05_` does that."""
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_smoke_mode(nb, tmp_path, shared_runs, tiny_path):
    import papermill

    checks = checks_for(nb)
    papermill.execute_notebook(
        str(nb), str(tmp_path / nb.name), parameters={"SMOKE": True, "RUNS_ROOT": str(shared_runs)},
        cwd=str(tmp_path), progress_bar=False, kernel_name="python3",
    )
    checks.check(shared_runs / "taskmaster")
    checks.check_skill(shared_runs / "taskmaster")
    executed = json.loads((tmp_path / nb.name).read_text())
    if any("plots." in source(c) for c in cells(nb)):
        outputs = [o for c in executed["cells"] for o in c.get("outputs", [])]
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{nb.name} draws figures but none displayed"


def test_a_persona_of_your_own_runs_through_the_chapter_and_lesson_1_edits_reach_the_end(tmp_path):
    """Chef Rosa through all seven notebooks in smoke mode, in one run folder, with the spec
    edited after lesson 1 (tests/nb_checks/own_persona.py says what is checked)."""
    import papermill
    from nb_checks.own_persona import run_chain

    runs = tmp_path / "runs"

    def lesson(number: str, **parameters):
        nb = next(p for p in NOTEBOOKS if p.name.startswith(number))
        papermill.execute_notebook(str(nb), str(tmp_path / nb.name),
                                   parameters={"SMOKE": True, "RUNS_ROOT": str(runs), **parameters},
                                   cwd=str(tmp_path), progress_bar=False, kernel_name="python3")

    run_chain(lesson, runs)


CONVERTER_AS_LLAMA_BPE = '''import runpy, sys
REAL = {real!r}
sys.path.insert(0, REAL)
from conversion import base
# The fixture's vocabulary is its own, so llama.cpp's table of known tokenizer hashes cannot name
# it; it is built with Llama 3's split, which llama.cpp calls "llama-bpe".
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "llama-bpe"
sys.argv[0] = REAL + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def llama_bpe_cache(where: Path) -> Path:
    """A persona-lab cache like this machine's (links to its models, wheels and converter) whose
    `convert_hf_to_gguf.py` declares the fixture's tokenizer to be llama-bpe."""
    from persona_lib import export
    from persona_lib.paths import cache_dir

    real_converter = export.converter_dir()
    where.mkdir()
    for entry in cache_dir().iterdir():
        if entry != real_converter:
            (where / entry.name).symlink_to(entry)
    converter = where / real_converter.name
    converter.mkdir()
    for entry in real_converter.iterdir():
        if entry.name != "convert_hf_to_gguf.py":
            (converter / entry.name).symlink_to(entry)
    (converter / "convert_hf_to_gguf.py").write_text(CONVERTER_AS_LLAMA_BPE.format(real=str(real_converter)))
    return where


def test_lessons_4_and_7_run_on_a_model_with_the_llama_3_2_template(tmp_path, monkeypatch):
    """Colab's default model family, in small: a tiny Llama with Llama 3's pre-tokenizer, special
    tokens and the Llama 3.2 Instruct chat template trains in lesson 4 and exports, chats and is
    served in lesson 7, which finds the end of turn (<|eot_id|>) from the template, tokenizes
    prompts in the GGUF exactly as in HF, and writes a Modelfile that stops where it should."""
    import papermill
    from fixtures.chat_tokenizers import tiny_llama3_model

    from persona_lib import ollama

    model = tiny_llama3_model(tmp_path / "tiny-llama3")
    monkeypatch.setenv("PERSONA_LAB_CACHE", str(llama_bpe_cache(tmp_path / "cache")))
    runs = tmp_path / "runs"
    for number in ("04", "07"):
        nb = next(p for p in NOTEBOOKS if p.name.startswith(number))
        papermill.execute_notebook(str(nb), str(tmp_path / nb.name),
                                   parameters={"SMOKE": True, "RUNS_ROOT": str(runs), "MODEL": str(model)},
                                   cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    out = runs / "taskmaster" / "export"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["adapter_trained"], "lesson 7 should export lesson 4's adapter, trained on this model"
    check = summary["chat_check"]
    assert check["ok"] and check["eos_token"] == "<|eot_id|>"
    parity = json.loads((out / "parity.json").read_text())
    assert all(s["prompt_tokens_equal"] == 1.0 for s in parity["systems"].values() if "prompt_tokens_equal" in s)
    # Not ChatML: the Modelfile leaves TEMPLATE to the one Ollama matches from the GGUF, and stops
    # at the template's own end of turn.
    text = (out / "Modelfile").read_text()
    modelfile = ollama.parse_modelfile(text)
    assert "template" not in modelfile and "TEMPLATE left out" in text and "<|im_end|>" not in text
    assert modelfile["parameters"]["stop"] == ["<|eot_id|>"]
