"""The Colab side, checked offline: version gates, the install cell, the GPU no-op."""

from importlib import metadata

import pytest

from persona_lib import colab


@pytest.mark.parametrize(
    "version, ok",
    [("2.9.0+cu126", True), ("2.4.0", True), ("2.14.1", True), ("2.15.0", False), ("2.3.1+cu121", False), ("3.0.0", False)],
)
def test_torch_range(version, ok):
    assert colab.torch_version_ok(version) is ok


def test_missing_lists_only_what_differs():
    have = f"pyyaml=={metadata.version('pyyaml')}"
    assert colab.missing([have, "pyyaml==0.0.1", "no-such-package==1.0"]) == ["pyyaml==0.0.1", "no-such-package==1.0"]


def test_install_cell_is_valid_python_and_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    compile(colab.INSTALL_CELL, "install-cell", "exec")
    exec(colab.INSTALL_CELL, {})  # outside Colab: no pip call, no error
    assert f'PERSONA_LAB_TAG = "{colab.RELEASE_TAG}"' in colab.INSTALL_CELL


def test_gpu_stack_is_a_noop_without_cuda(capsys):
    colab.install_gpu_stack()
    assert "No GPU" in capsys.readouterr().out


def test_badge_points_at_the_tagged_notebook():
    url = colab.badge_url("01_persona_spec.ipynb")
    assert url.endswith(f"/blob/{colab.RELEASE_TAG}/notebooks/01_persona_spec.ipynb")
