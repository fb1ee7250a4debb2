"""The install builds llama.cpp for every CPU of its architecture, never natively, caches the
wheel by its flags, and proves the runtime before anything else uses it."""

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from persona_lib import llama_build

ROOT = Path(__file__).resolve().parent.parent

INSTALL = ROOT / "scripts" / "install.sh"


def test_no_build_is_native():
    """llama.cpp's default (-march=native) crashed on an Intel Xeon with AMX and would die with an
    illegal instruction on a CPU without this one's extensions: every profile turns it off first,
    and nothing in the install asks for it or builds llama-cpp-python another way."""
    for profile in llama_build.PROFILES:
        args = llama_build.cmake_args(profile)
        assert args[0] == "-DGGML_NATIVE=OFF", profile
        on = {a[2:].split("=")[0] for a in args if a.endswith("=ON")}
        assert not on & set(llama_build.NEVER_X86), (profile, on)  # no AVX-512, no AMX, ever
    assert set(llama_build.NEVER_X86) >= {"GGML_AVX512", "GGML_AVX512_BF16", "GGML_AMX_TILE", "GGML_AMX_INT8"}
    for path in (INSTALL, ROOT / "persona_lib" / "llama_build.py"):
        text = path.read_text()
        assert not re.search(r"march=native|GGML_NATIVE=ON|GGML_NATIVE:BOOL=ON", text), path
    script = INSTALL.read_text()
    assert "CMAKE_ARGS" not in script and "pip wheel" not in script  # the only build goes through llama_build
    assert re.search(r"-m persona_lib\.llama_build wheel .*--profile", script)


def test_installed_library_has_no_cpu_specific_paths():
    """The llama.cpp this test suite runs was compiled without AVX-512 and AMX, whatever CPU built
    it (on an AVX-512 or AMX machine a native build reports them here)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AVX2 = 1" in info or platform_is_not_x86()
    assert not re.search(r"AVX512|AMX", info), info


def platform_is_not_x86():
    return not llama_build.X86


def test_the_installed_wheel_says_how_it_was_built():
    """install.sh leaves the build record of the wheel it installed in the environment."""
    record = Path(sys.prefix) / "llama-cpp-build.json"
    if not record.is_file():
        pytest.skip(f"{record} is missing: this environment was not made by scripts/install.sh")
    build = json.loads(record.read_text())
    assert build["profile"] in llama_build.PROFILES
    assert build["cmake_args"] == llama_build.cmake_args(build["profile"])
    assert build["built_on"]["cpu"] and build["build_seconds"] > 0


def test_each_flag_set_has_its_own_wheel_folder(tmp_path, monkeypatch):
    portable = llama_build.wheel_dir(tmp_path, "0.3.36", "portable")
    baseline = llama_build.wheel_dir(tmp_path, "0.3.36", "baseline")
    assert portable != baseline and "-portable-" in portable.name and "-baseline-" in baseline.name
    monkeypatch.setattr(llama_build, "NEVER_X86", llama_build.NEVER_X86[:-1])  # any change of the flags...
    assert llama_build.wheel_dir(tmp_path, "0.3.36", "portable") != portable or not llama_build.X86  # ...a new folder
    assert llama_build.find_wheel(portable) is None


def test_profile_follows_the_cpu():
    v3 = {"sse4_2", "avx", "avx2", "fma", "f16c", "bmi2"}
    if not llama_build.X86:
        pytest.skip("the profiles differ only on x86-64")
    assert llama_build.choose_profile(v3 | {"avx512f", "amx_tile"}) == "portable"
    assert llama_build.choose_profile(v3 - {"avx2"}) == "baseline"
    assert llama_build.choose_profile(set()) == "baseline"


@pytest.fixture
def fake_python(tmp_path):
    """An interpreter stand-in that ends the way a broken build does."""

    def make(body: str) -> str:
        path = tmp_path / f"python-{len(list(tmp_path.iterdir()))}"
        path.write_text("#!/usr/bin/env bash\n" + body + "\n")
        path.chmod(0o755)
        return str(path)

    return make


def test_check_names_crashes_and_failures(fake_python, tmp_path):
    outcome, what = llama_build.check(tmp_path / "m.gguf", fake_python("kill -SEGV $$"))
    assert outcome == llama_build.CRASHED and what.startswith("SIGSEGV") and "AMX" in what
    outcome, what = llama_build.check(tmp_path / "m.gguf", fake_python("kill -ILL $$"))
    assert outcome == llama_build.CRASHED and "illegal instruction" in what
    outcome, what = llama_build.check(tmp_path / "m.gguf", fake_python("echo 'No module named llama_cpp' >&2; exit 1"))
    assert outcome == llama_build.FAILED and "No module named llama_cpp" in what
    outcome, what = llama_build.check(tmp_path / "m.gguf", fake_python("sleep 5"), timeout=0.5)
    assert outcome == llama_build.CRASHED and "did not finish" in what


def test_check_decodes_the_embedded_model():
    from persona_lib.models import embedded_gguf_path

    outcome, what = llama_build.check(embedded_gguf_path())
    assert outcome == llama_build.OK and what.startswith("decoded:")


def run_install(tmp_path, check_statuses: list[int]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """install.sh for real, with an interpreter stand-in for the venv's python that logs what it is
    asked to do: pip succeeds, `wheel` prints a wheel per profile, `check` exits with the next status."""
    cache, venv = tmp_path / "cache", tmp_path / "venv"
    (cache / "sdist").mkdir(parents=True, exist_ok=True)
    (cache / "sdist" / "llama_cpp_python-0.3.36.tar.gz").write_text("")
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (tmp_path / "statuses").write_text("\n".join(map(str, check_statuses)) + "\n")
    log = tmp_path / "log"
    log.unlink(missing_ok=True)
    (venv / "bin" / "python").write_text(f"""#!/usr/bin/env bash
echo "$*" >> {log}
if [[ $2 == persona_lib.llama_build && $3 == wheel ]]; then
  dir={tmp_path}/wheels/$9; mkdir -p $dir; echo "{{\\"profile\\": \\"$9\\"}}" > $dir/build.json
  echo $dir/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl
elif [[ $2 == persona_lib.llama_build && $3 == check ]]; then
  status=$(head -n 1 {tmp_path}/statuses); sed -i 1d {tmp_path}/statuses; exit $status
fi
""")
    (venv / "bin" / "python").chmod(0o755)
    env = dict(os.environ, PERSONA_LAB_VENV=str(venv), PERSONA_LAB_CACHE=str(cache))
    proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, env=env, timeout=60)
    return proc, log.read_text().splitlines()


def test_install_rebuilds_conservatively_after_a_crash(tmp_path):
    proc, calls = run_install(tmp_path, [1, 0])
    assert proc.returncode == 0, proc.stderr
    wheels = [c.split("--profile ")[1] for c in calls if " wheel " in c]
    assert wheels == ["auto", "baseline"]
    assert sum(c.endswith("check") for c in calls) == 2
    assert "rebuilding llama.cpp for plain x86-64" in proc.stdout
    assert json.loads((tmp_path / "venv" / "llama-cpp-build.json").read_text()) == {"profile": "baseline"}


def test_install_stops_with_a_message_when_the_runtime_cannot_work(tmp_path):
    proc, calls = run_install(tmp_path, [2])  # not a crash (an import error): a rebuild would not help
    assert proc.returncode == 1 and "llama.cpp cannot decode on this machine" in proc.stderr
    assert [c.split("--profile ")[1] for c in calls if " wheel " in c] == ["auto"]
    proc, calls = run_install(tmp_path / "again", [1, 1])  # crashes even for plain x86-64
    assert proc.returncode == 1 and "cannot decode" in proc.stderr


def test_install_keeps_a_wheel_of_the_same_flags(tmp_path):
    run_install(tmp_path, [0])
    proc, calls = run_install(tmp_path, [0])  # the same venv again: nothing to reinstall
    assert proc.returncode == 0
    assert not [c for c in calls if "--force-reinstall" in c][1:]


def test_describe_exit_names_the_signal():
    assert llama_build.describe_exit(-signal.SIGILL).startswith("SIGILL: an illegal instruction")
    assert llama_build.describe_exit(3) == "exit status 3"


def test_converters_come_from_the_same_source(tmp_path):
    """The GGUF converters are unpacked from the llama-cpp-python source the runtime was built
    from (their gguf-py must match the runtime's format), once, with nothing else."""
    import tarfile

    sdist = tmp_path / "sdist" / "llama_cpp_python-9.9.9.tar.gz"
    sdist.parent.mkdir()
    src = tmp_path / "src" / "llama_cpp_python-9.9.9" / "vendor" / "llama.cpp"
    for name in ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py/gguf/__init__.py",
                 "conversion/x.py", "src/llama.cpp"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(name)
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(tmp_path / "src" / "llama_cpp_python-9.9.9", arcname="llama_cpp_python-9.9.9")
    dest = llama_build.unpack_converters(sdist, tmp_path / "cache")
    assert dest == tmp_path / "cache" / "llama.cpp-9.9.9"
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "conversion/x.py", "convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert llama_build.unpack_converters(sdist, tmp_path / "cache") == dest  # kept
