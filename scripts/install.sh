#!/usr/bin/env bash
# Set up persona-lab on a CPU box, offline from then on.
#
#   bash scripts/install.sh          # the main job: CPU torch, llama.cpp, the embedded model
#   bash scripts/install.sh --dev    # the same plus what the tests need
#
# Creates .venv (PERSONA_LAB_VENV overrides). llama-cpp-python ships on PyPI as source
# only: the first install builds its wheel (about 5 minutes on 2 cores, 276 s measured) with
# persona_lib/llama_build.py, for every CPU of this architecture rather than for this one, into
# ~/.cache/persona-lab/wheels/<version>-<profile>-<flags hash>; later installs reuse it. After
# installing, the llama.cpp runtime is proved by decoding a few tokens of the embedded model;
# if that crashes, the wheel is rebuilt with every optional CPU extension off and proved again.
# The same source distribution carries llama.cpp's GGUF converters (convert_hf_to_gguf.py,
# convert_lora_to_gguf.py with their gguf-py and conversion/ folders); they are unpacked
# here, at install time, into ~/.cache/persona-lab/llama.cpp-<version>, never at test time.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=requirements-cpu.txt
if [[ "${1:-}" == "--dev" ]]; then requirements=requirements-dev.txt; fi

venv=${PERSONA_LAB_VENV:-.venv}
cache=${PERSONA_LAB_CACHE:-$HOME/.cache/persona-lab}
llama_version=$(sed -n 's/^llama-cpp-python==//p' requirements-cpu.txt)
sdist=$cache/sdist/llama_cpp_python-$llama_version.tar.gz
start=$SECONDS

[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if [[ ! -f $sdist ]]; then
  echo "== fetching llama-cpp-python $llama_version source"
  "${pip[@]}" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$llama_version" -d "$cache/sdist"
fi
echo "== llama.cpp's GGUF converters (unpacked once from the same source into $cache)"
"$venv/bin/python" -m persona_lib.llama_build converters --sdist "$sdist" --cache "$cache" >/dev/null

if [[ $requirements == requirements-dev.txt ]] && ! command -v go >/dev/null; then
  # tests/test_export.py renders Ollama Modelfile templates with Go's real text/template.
  echo "== installing Go from Debian's packages (for the Modelfile template test)"
  { apt-get update -qq && apt-get install -y -qq golang-go >/dev/null; } ||
    echo "   could not install golang-go: the Modelfile template tests will be skipped"
fi
if [[ $requirements == requirements-dev.txt ]] && [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  # tests/test_form_browser.py drives the spec form in JupyterLab with Debian's Chromium.
  echo "== installing Chromium and its driver from Debian's packages (for the spec form's browser test)"
  { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
    echo "   could not install chromium and chromium-driver: the spec form's browser test will be skipped"
fi

# Build (once per flag set) and install the llama.cpp wheel, replacing one built another way.
install_llama() {  # $1: auto, portable or baseline
  local wheel
  wheel=$("$venv/bin/python" -m persona_lib.llama_build wheel --sdist "$sdist" --cache "$cache" --profile "$1" | tail -n 1)
  if ! cmp -s "$(dirname "$wheel")/build.json" "$venv/llama-cpp-build.json"; then
    "${pip[@]}" install --quiet --no-deps --force-reinstall "$wheel"
    cp "$(dirname "$wheel")/build.json" "$venv/llama-cpp-build.json"
  fi
  wheel_dir=$(dirname "$wheel")
}
install_llama auto

echo "== installing $requirements into $venv"
"${pip[@]}" install --quiet --find-links "$wheel_dir" -r "$requirements" -e .

echo "== checking the llama.cpp runtime on this CPU"
status=0
"$venv/bin/python" -m persona_lib.llama_build check || status=$?
if [[ $status == 1 ]]; then  # it crashed: build with every optional CPU extension off, prove again
  echo "== rebuilding llama.cpp for plain x86-64 (every optional CPU extension off), then checking again"
  install_llama baseline
  status=0
  "$venv/bin/python" -m persona_lib.llama_build check || status=$?
fi
if [[ $status != 0 ]]; then
  echo "llama.cpp cannot decode on this machine (see the line above); persona-lab needs it for GGUF export and chat." >&2
  exit 1
fi
echo "== installed in $((SECONDS - start)) s; activate with: source $venv/bin/activate"
