"""The house in order: no import cycle between persona_lib's modules, every repository file
that the code, notebooks and docs name exists, and the tree passes the lint."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "persona_lib"
# Folders and top-level files of this repository: a name that starts with one of these is a
# claim that the file is here (run-time paths such as runs/<slug>/... are not).
TOP = ("persona_lib/", "bench/", "scripts/", "tests/", "notebooks/", "persona_data/", ".claude/", ".ci/")
TOP_FILES = ("README.md", "LEARNING-SPEC.md", "requirements.txt", "pyproject.toml")
# Named on purpose though absent: the chapter's example of a learner's own data file.
STAND_INS = {"persona_data/zen_coder_full.jsonl"}
PATH = re.compile(r"(?<![\w/.~-])((?:%s)[\w./-]*\w|%s)" % ("|".join(re.escape(t) for t in TOP),
                                                           "|".join(re.escape(f) for f in TOP_FILES)))


def imports(path: Path) -> set[str]:
    """persona_lib modules that `path` imports anywhere (inside functions too), except under
    `if TYPE_CHECKING:`, which never runs."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "persona_lib":
            if node.module == "persona_lib":
                found |= {a.name for a in node.names if a.name in modules}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("persona_lib.")}
    return found - {path.stem}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


def test_cycles_finds_a_lazy_import_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_persona_lib_has_no_import_cycle():
    graph = {p.stem: imports(p) for p in PACKAGE.glob("*.py")}
    assert cycles(graph) == []


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return out.split()


def test_every_repository_file_named_in_code_and_docs_exists():
    files = set(tracked_files())
    folders = {str(Path(f).parent) + "/" for f in files} | {str(p) + "/" for f in files for p in Path(f).parents}
    texts = [f for f in files if f.endswith((".py", ".md", ".yaml", ".sh", ".txt")) and not f.startswith("tests/data/")]
    missing = []
    for name in texts:
        for line_no, line in enumerate((ROOT / name).read_text(errors="replace").splitlines(), 1):
            for match in PATH.finditer(line):
                ref, after = match.group(1).rstrip("."), line[match.end():match.end() + 1]
                if after in ("<", "{", "[", "*") or "NN_" in ref or ref in STAND_INS:
                    continue  # a pattern (updates_<persona>.json, NN_name.py), not one file
                if name.startswith("bench/") and ref.startswith("bench/results/"):
                    continue  # what a benchmark writes, there once it has run
                if ref in files or ref in folders or ref + "/" in folders:
                    continue
                missing.append(f"{name}:{line_no}: {ref}")
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)


def test_the_tree_passes_ruff():
    """No unused or undefined names, imports in order: pyproject.toml's [tool.ruff] over the
    library, notebooks' sources, scripts, benchmarks and tests."""
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_the_test_report_is_written_by_the_outer_session_only(tmp_path):
    """PERSONA_LAB_TEST_REPORT names the file the whole session writes; pytest runs that tests
    start in subprocesses must not see it, or their smaller report lands in the same file."""
    import os

    probe = ("import os, runpy; ns = runpy.run_path('tests/conftest.py'); "
             "print(ns['REPORT'], os.environ.get('PERSONA_LAB_TEST_REPORT'))")
    env = {**os.environ, "PERSONA_LAB_TEST_REPORT": str(tmp_path / "report.json")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(tmp_path / "report.json"), "None"]
