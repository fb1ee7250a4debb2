#!/usr/bin/env bash
# Set up persona-lab on a CPU box, offline from then on.
#
#   bash scripts/install.sh          # the main job: CPU torch, llama.cpp, the embedded model
#   bash scripts/install.sh --dev    # the same plus what the tests need
#
# Creates .venv (PERSONA_LAB_VENV overrides). llama-cpp-python ships on PyPI as source
# only: the first install builds its wheel (about 7 minutes on 2 cores) into
# ~/.cache/persona-lab/wheels, and every later install on the machine reuses it. The same
# source distribution carries llama.cpp's GGUF converters (convert_hf_to_gguf.py,
# convert_lora_to_gguf.py with their gguf-py and conversion/ folders); they are unpacked
# here, at install time, into ~/.cache/persona-lab/llama.cpp-<version>, never at test time.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=requirements-cpu.txt
if [[ "${1:-}" == "--dev" ]]; then requirements=requirements-dev.txt; fi

venv=${PERSONA_LAB_VENV:-.venv}
cache=${PERSONA_LAB_CACHE:-$HOME/.cache/persona-lab}
wheels=$cache/wheels
llama_version=$(sed -n 's/^llama-cpp-python==//p' requirements-cpu.txt)
sdist=$cache/sdist/llama_cpp_python-$llama_version.tar.gz
converters=$cache/llama.cpp-$llama_version
start=$SECONDS

[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if [[ ! -f $sdist ]]; then
  echo "== fetching llama-cpp-python $llama_version source"
  "${pip[@]}" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$llama_version" -d "$cache/sdist"
fi
if ! ls "$wheels"/llama_cpp_python-"$llama_version"-*.whl >/dev/null 2>&1; then
  echo "== building llama-cpp-python $llama_version (first install on this machine: about 7 minutes)"
  "${pip[@]}" wheel --quiet --no-deps "$sdist" -w "$wheels"
fi
if [[ ! -f $converters/convert_hf_to_gguf.py ]]; then
  echo "== unpacking llama.cpp's GGUF converters into $converters"
  tmp=$(mktemp -d)
  tar -xzf "$sdist" -C "$tmp" --wildcards \
    "*/vendor/llama.cpp/convert_hf_to_gguf.py" "*/vendor/llama.cpp/convert_lora_to_gguf.py" \
    "*/vendor/llama.cpp/gguf-py/*" "*/vendor/llama.cpp/conversion/*"
  rm -rf "$converters.tmp" && mv "$tmp"/*/vendor/llama.cpp "$converters.tmp"
  mv "$converters.tmp" "$converters" && rm -rf "$tmp"
fi

if [[ $requirements == requirements-dev.txt ]] && ! command -v go >/dev/null; then
  # tests/test_export.py renders Ollama Modelfile templates with Go's real text/template.
  echo "== installing Go from Debian's packages (for the Modelfile template test)"
  { apt-get update -qq && apt-get install -y -qq golang-go >/dev/null; } ||
    echo "   could not install golang-go: the Modelfile template tests will be skipped"
fi

echo "== installing $requirements into $venv"
"${pip[@]}" install --quiet --find-links "$wheels" -r "$requirements" -e .
echo "== installed in $((SECONDS - start)) s; activate with: source $venv/bin/activate"
