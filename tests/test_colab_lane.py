"""The Colab-shaped lane: every notebook, in lesson order, as a learner's Run all meets it.

A virtual environment holds what Colab's runtime holds for the packages that matter
(tests/colab/colab_runtime.txt, with its substitutions), built once per machine and then
layered under a fresh environment per run. In that environment, with Colab's marker set and
`google.colab` replaced by tests/colab/stub (Drive mounts onto a temporary folder, no
secrets), each notebook runs top to bottom in smoke mode on the CPU with its install cell as
written: it pip-installs persona-lab from a snapshot of this working tree tagged with the
release tag (Colab installs from GitHub at that tag), then `persona_lib.colab.setup(NEEDS)`.
llama-cpp-python comes from this machine's portable wheel, as it would from the maintainers'
prebuilt index on Colab. A notebook that needs a package its install cell did not bring fails
here, and each notebook's writes are checked as in the CPU lane (tests/nb_checks).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nb_checks import checks_for

from persona_lib import colab
from persona_lib.paths import cache_dir

ROOT = Path(__file__).resolve().parent.parent
LANE = ROOT / "tests" / "colab"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# What the lane adds to run notebooks and tests in that environment (Colab runs cells itself).
HARNESS = ["torch==2.13.0", "papermill==2.7.0", "pytest==9.2.0"]

RUN_NOTEBOOK = """
import json, sys, papermill
parameters = {"SMOKE": True, "RUNS_ROOT": "", **json.loads(sys.argv[4] if len(sys.argv) > 4 else "{}")}
papermill.execute_notebook(sys.argv[1], sys.argv[2], parameters=parameters,
                           cwd=sys.argv[3], progress_bar=False, kernel_name="python3")
"""


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))[:300]}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def base_environment() -> Path:
    """Colab's packages at Colab's versions (plus the harness), built once per machine: a
    `ready` file written last marks a complete one."""
    spec = (LANE / "colab_runtime.txt").read_text() + "\n".join(HARNESS) + sys.version
    venv = cache_dir() / f"colab-lane-{hashlib.sha256(spec.encode()).hexdigest()[:10]}"
    if (venv / "ready").is_file():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         *HARNESS, "-r", str(LANE / "colab_runtime.txt")], timeout=1800)
    (venv / "ready").write_text("")
    return venv


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def learner_environment(base: Path, where: Path) -> Path:
    """A fresh environment over the base one (a .pth file puts the base's packages after its
    own): what the install cell installs lands here, and the base stays as Colab ships it."""
    venv = where / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    (site_packages(venv) / "colab_runtime.pth").write_text(str(site_packages(base)) + "\n")
    pip = next(line for line in (LANE / "colab_runtime.txt").read_text().splitlines() if line.startswith("pip=="))
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", pip])  # Colab's pip
    return venv


def release_snapshot(where: Path) -> Path:
    """This working tree (tracked and new files, not ignored ones) as a git repository with the
    release tag, the way GitHub serves the tag to Colab."""
    files = run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT).stdout.split("\0")
    repo = where / "release"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    git = ["git", "-c", "user.name=lane", "-c", "user.email=lane@localhost", "-C", str(repo)]
    run(git + ["init", "-q"])
    run(git + ["add", "-A"])
    run(git + ["commit", "-q", "-m", "release snapshot"])
    run(git + ["tag", colab.RELEASE_TAG])
    return repo


def installed(venv: Path, name: str) -> str | None:
    code = f"from importlib import metadata\ntry: print(metadata.version({name!r}))\nexcept Exception: print('')"
    return run([str(venv / "bin" / "python"), "-c", code]).stdout.strip() or None


@pytest.fixture(scope="module")
def lane(tmp_path_factory):
    where = tmp_path_factory.mktemp("colab")
    base = base_environment()
    venv = learner_environment(base, where)
    drive, cache = where / "drive", where / "cache"
    (cache / "sdist").mkdir(parents=True)
    sdist = f"llama_cpp_python-{colab.LLAMA_CPP.split('==')[1]}.tar.gz"
    os.symlink(cache_dir() / "sdist" / sdist, cache / "sdist" / sdist)  # spares a 75 MB download
    build = json.loads((Path(sys.prefix) / "llama-cpp-build.json").read_text())
    from persona_lib import llama_build

    wheel_dir = llama_build.wheel_dir(cache_dir(), colab.LLAMA_CPP.split("==")[1], build["profile"])
    env = {**os.environ,
           "COLAB_RELEASE_TAG": "release-colab-lane",  # Colab's marker (persona_lib.colab.in_colab)
           "PERSONA_LAB_SOURCE": f"git+file://{release_snapshot(where)}",
           "PYTHONPATH": str(LANE / "stub"), "COLAB_STUB_DRIVE": str(drive),
           "PERSONA_LAB_CACHE": str(cache), "PERSONA_LAB_LLAMA_INDEX": "", "PIP_FIND_LINKS": str(wheel_dir),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("OPENAI_API_KEY", "PERSONA_LAB_RUNS", "VIRTUAL_ENV"):
        env.pop(name, None)
    shutil.rmtree(colab.LOCAL_DISK, ignore_errors=True)  # lesson 7's local disk: nothing from an earlier run
    yield {"venv": venv, "env": env, "where": where, "runs": drive / "MyDrive" / "persona-lab" / "runs"}
    if Path(colab.DRIVE_MOUNT).is_symlink():
        Path(colab.DRIVE_MOUNT).unlink()
    shutil.rmtree(colab.LOCAL_DISK, ignore_errors=True)


def test_the_base_environment_is_colabs():
    base = base_environment()
    for line in (LANE / "colab_runtime.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            assert installed(base, name) == version, name


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_the_colab_lane(lane, nb):
    """In lesson order (the parametrisation's), one run folder on the stand-in Drive."""
    out = lane["where"] / nb.name
    run([str(lane["venv"] / "bin" / "python"), "-c", RUN_NOTEBOOK, str(nb), str(out), str(lane["where"])],
        env=lane["env"], timeout=1800)
    executed = json.loads(out.read_text())
    install = executed["cells"][next(i for i, c in enumerate(executed["cells"]) if c["cell_type"] == "code")]
    text = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                   for o in install.get("outputs", []))
    assert not re.search(r"ERROR|dependency resolver|Traceback", text), f"the install cell's output alarms:\n{text}"
    checks = checks_for(nb)
    checks.check(lane["runs"] / "taskmaster")
    checks.check_skill(lane["runs"] / "taskmaster")
    # Only the lessons that use llama.cpp install it.
    if nb.name < "03":
        assert installed(lane["venv"], "llama-cpp-python") is None, f"{nb.name} installed llama.cpp"
    if nb.name[:2] in ("03", "05", "07"):
        assert installed(lane["venv"], "llama-cpp-python") == colab.LLAMA_CPP.split("==")[1]
    # Colab's own versions stay where the project works with them.
    assert installed(lane["venv"], "ipywidgets") == "7.7.1" and installed(lane["venv"], "openai") == "2.54.0"


def test_a_persona_of_your_own_runs_through_the_chapter_in_the_lane(lane, tmp_path):
    """Chef Rosa, as in the CPU lane (tests/nb_checks/own_persona.py), each notebook with its
    install cell and the default runs folder on the stand-in Drive."""
    from nb_checks.own_persona import run_chain

    def lesson(number: str, **parameters):
        nb = next(p for p in NOTEBOOKS if p.name.startswith(number))
        run([str(lane["venv"] / "bin" / "python"), "-c", RUN_NOTEBOOK, str(nb), str(tmp_path / nb.name),
             str(lane["where"]), json.dumps(parameters)], env=lane["env"], timeout=1800)

    run_chain(lesson, lane["runs"])


def test_the_spec_form_works_with_colabs_ipywidgets(lane):
    """The widget tests again, in the lane (ipywidgets 7.7.1; the CPU lane has 8.x)."""
    assert installed(lane["venv"], "persona-lab"), "run the notebooks first (this test follows them)"
    run([str(lane["venv"] / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_widgets.py")], cwd=ROOT, timeout=600,
        env={k: v for k, v in lane["env"].items() if k != "COLAB_RELEASE_TAG"})


def test_unsloths_own_trainer_trains_and_refuses_bf16_on_an_fp16_model(lane):
    """What a GPU runtime installs (`colab.install_gpu_stack` itself, with CUDA faked), then
    Unsloth's real SFTTrainer, generated on the CPU as a GPU gets it: it
    trains the tiny model through persona_lib.train, saves the adapter, and raises the TypeError
    a T4 raised when bf16 was decided by torch.cuda.is_bf16_supported() (a T4 model is fp16)."""
    python = str(lane["venv"] / "bin" / "python")
    env = {**lane["env"], "UNSLOTH_ALLOW_CPU": "1"}
    # install_gpu_stack sees a GPU once (its own check); bitsandbytes and unsloth, imported after
    # the install, see this machine as it is (a CUDA answer would send them to CUDA kernels).
    gpu_runtime = ("import torch; answers = iter([True]); torch.cuda.is_available = lambda: next(answers, False)\n"
                   "from persona_lib import colab; colab.install_gpu_stack()")
    # the install cell's GPU step, as written
    run([python, "-c", gpu_runtime], env=env, cwd=lane["where"], timeout=1200)
    assert installed(lane["venv"], "unsloth") == colab.UNSLOTH_NO_DEPS[0].split("==")[1]
    done = run([python, str(LANE / "unsloth_trainer.py")], env=env, cwd=lane["where"], timeout=900)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["sft_trainer"] == "UnslothSFTTrainer"
    assert found["persona_trainer_bases"][:2] == ["PersonaSFTTrainer", "UnslothSFTTrainer"]
    assert found["steps"] == 2 and found["adapter_saved"]
    assert found["fp16_model_bf16_args"].startswith("TypeError: Unsloth: Model is in float16 precision")
