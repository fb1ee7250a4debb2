"""The Colab side, checked offline: version gates, the install cell, the GPU no-op."""

import os
from importlib import metadata

import pytest

from persona_lib import colab


@pytest.mark.parametrize(
    "version, ok",
    [("2.9.0+cu126", True), ("2.4.0", True), ("2.14.1", True), ("2.15.0", False), ("2.3.1+cu121", False),
     ("3.0.0", False)],
)
def test_torch_range(version, ok):
    assert colab.torch_version_ok(version) is ok


def test_missing_lists_only_what_differs():
    have = f"pyyaml=={metadata.version('pyyaml')}"
    assert colab.missing([have, "pyyaml==0.0.1", "no-such-package==1.0"]) == ["pyyaml==0.0.1", "no-such-package==1.0"]


def test_install_cell_is_valid_python_and_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    cell = colab.install_cell(["smollm2", "llama"])
    compile(cell, "install-cell", "exec")
    exec(cell, {})  # outside Colab: no pip call, no error
    assert f'PERSONA_LAB_TAG = "{colab.RELEASE_TAG}"' in cell and "NEEDS = ['smollm2', 'llama']" in cell
    with pytest.raises(ValueError, match="unknown needs"):
        colab.install_cell(["cuda"])


def test_colab_pins_equal_the_cpu_pins():
    """The packages a lesson installs on Colab are the versions the CPU path is tested with."""
    from pathlib import Path

    cpu = {line.split("==")[0].lower(): line.strip() for line in
           (Path(__file__).resolve().parent.parent / "requirements-cpu.txt").read_text().splitlines()
           if "==" in line and not line.startswith("#")}
    for pin in [colab.SMOLLM2, colab.LLAMA_CPP, *colab.LLAMA_SERVER]:
        assert cpu[pin.split("==")[0].lower()] == pin


def test_gpu_stack_is_a_noop_without_cuda(capsys):
    colab.install_gpu_stack()
    assert "No GPU" in capsys.readouterr().out


def test_badge_points_at_the_tagged_notebook():
    url = colab.badge_url("01_persona_spec.ipynb")
    assert url.endswith(f"/blob/{colab.RELEASE_TAG}/notebooks/01_persona_spec.ipynb")


def test_release_tag_package_version_and_badges_agree():
    """The badges and the install cell open and install `RELEASE_TAG`; it must be the package's
    version, and every badge in the README and the notebooks must point at it."""
    import re
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parent.parent
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert colab.RELEASE_TAG == f"v{version}"
    texts = [root / "README.md", *sorted((root / "notebooks").glob("*.ipynb"))]
    badges = [(path.name, tag) for path in texts
              for tag in re.findall(r"colab\.research\.google\.com/github/[^/]+/[^/]+/blob/([^/]+)/", path.read_text())]
    assert len(badges) >= 14  # seven in the README, one per notebook
    assert {tag for _, tag in badges} == {colab.RELEASE_TAG}, badges
    readme = (root / "README.md").read_text()  # how a release is cut: the tag it names, the one it pushes
    assert f"(now `{colab.RELEASE_TAG}`)" in readme and 'print(RELEASE_TAG)")\ngit tag "$TAG"' in readme


@pytest.fixture
def t4(monkeypatch):
    """A free Colab T4 as torch and Colab describe it (compute capability 7.5, 15 GB, Unsloth
    installed by the install cell): faked device properties, not flags passed by hand."""
    import importlib.util
    import types

    import torch

    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-t4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 really answers
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda *a, **k: types.SimpleNamespace(name="Tesla T4", total_memory=15 * 2**30,
                                                              major=7, minor=5))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "unsloth" else real(name, *a))


def test_t4_decisions_follow_the_device(t4):
    from persona_lib import models, train

    assert models.unsloth_available() and models.default_model(smoke=False) == models.COLAB_DEFAULT
    config = train.preset(models.COLAB_DEFAULT)
    assert config == train.TrainConfig.colab_t4()
    assert (config.load_in_4bit and config.optim == "adamw_8bit"
            and config.batch_size * config.gradient_accumulation_steps == 8)
    precision, note = train.resolve_precision(config.precision, cuda=True, bf16_supported=train.native_bf16(cuda=True))
    assert precision == "fp16"  # Unsloth loads a T4 model in fp16 and refuses bf16 training args
    assert train.choose_backend(config.backend, cuda=True, unsloth_installed=True) == "unsloth"


def test_t4_runtime_installs_unsloth_without_touching_torch(t4, monkeypatch):
    calls = []
    monkeypatch.setattr(colab, "pip_install", lambda *args, what: calls.append((what, args)))
    monkeypatch.setattr(colab, "missing", lambda reqs: list(reqs))
    import sys
    import types

    monkeypatch.setitem(sys.modules, "unsloth", types.ModuleType("unsloth"))  # the import after installing
    colab.setup([])
    assert [what for what, _ in calls] == ["Unsloth", "Unsloth's dependencies"]
    assert calls[0][1][0] == "--no-deps" and not any(a.startswith("torch==") for _, args in calls for a in args)
    # the pinned libraries ride along, so a dependency cannot upgrade past their ranges
    assert f"transformers=={metadata.version('transformers')}" in calls[1][1]


def test_lessons_install_only_what_they_need(monkeypatch):
    """No key: a judge lesson brings llama.cpp and the embedded model; a lesson that needs
    neither installs nothing beyond the library."""
    calls, llama = [], []
    monkeypatch.setattr(colab, "pip_install", lambda *args, what: calls.append(what))
    monkeypatch.setattr(colab, "missing", lambda reqs: list(reqs))
    monkeypatch.setattr(colab, "install_llama", lambda: llama.append(True))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    colab.setup([])
    assert calls == [] and llama == []
    colab.setup(["judge"])
    assert calls == ["the embedded SmolLM2 model"] and llama == [True]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    calls.clear(), llama.clear()
    colab.setup(["judge"])
    assert calls == [] and llama == []  # with a key, the judge is OpenAI: nothing local to install


def test_drive_holds_the_run_folders_on_colab(monkeypatch, tmp_path):
    import sys
    import types

    mounted = []
    drive = types.SimpleNamespace(mount=lambda point: mounted.append(point))
    google = types.ModuleType("google")
    google_colab = types.ModuleType("google.colab")
    google_colab.drive = drive
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google_colab)
    monkeypatch.setenv("COLAB_RELEASE_TAG", "x")
    monkeypatch.setenv("PERSONA_LAB_RUNS", "restored after the test")
    monkeypatch.setattr(colab, "DRIVE_MOUNT", str(tmp_path / "drive"))
    root = colab.drive_runs_root()
    assert mounted == [str(tmp_path / "drive")] and root == tmp_path / "drive" / "MyDrive" / "persona-lab" / "runs"
    assert os.environ["PERSONA_LAB_RUNS"] == str(root)
