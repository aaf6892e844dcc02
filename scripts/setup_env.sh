#!/usr/bin/env bash
# Creates a virtual environment (default .venv, or $VENV) and installs resnet_jax
# into it, editable, with its `tf` extra (tf.data input, TFDS) and the exact
# versions in constraints.txt: the newest a user gets, on Python 3.13 (Colab's; jax
# 0.11 and later need 3.12 or newer). It takes python3.13, else python3.12, from the
# PATH or from pyenv's versions, says which, and stops in one line where neither is.
#   bash scripts/setup_env.sh          # the package
#   bash scripts/setup_env.sh test     # plus the test extra (pytest; torch: on 3.13
#                                      # PyPI's CUDA build, which runs on the CPU)
# Does nothing (offline, in a second) when that venv already has this install of
# the same pyproject.toml and constraints.txt, so that a rerun of the README's
# train command resumes at once; delete $VENV to force a reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
extras="[tf${1:+,$1}]"
stamp="$venv/.resnet_jax-installed"
inputs=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
installed() {  # this pyproject and constraints, with extra $1 (or any, for none), are in $venv
  [ -x "$venv/bin/python" ] && [ -f "$stamp" ] || return 1
  if [ -z "$1" ]; then grep -q "^$inputs " "$stamp"; else grep -qx "$inputs $1" "$stamp"; fi
}
if installed "${1:-}"; then
  echo "resnet_jax$extras is already installed in $venv"
  exit 0
fi
python=""
for candidate in python3.13 python3.12 "$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3.13 \
    "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
  if "$candidate" -c "" 2>/dev/null; then python=$candidate; break; fi
done
if [ -z "$python" ]; then
  echo "error: constraints.txt's versions (jax $(grep -m1 '^jax==' constraints.txt | cut -d= -f3)) need" \
       "Python 3.13 or 3.12, and neither python3.13 nor python3.12 is here (PATH or pyenv)" >&2
  exit 1
fi
echo "creating $venv with $("$python" --version) ($python)"
"$python" -m venv --clear "$venv"  # a venv of another Python cannot be upgraded in place
"$venv/bin/python" -m pip install --quiet --upgrade "pip>=24"
"$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".$extras"
echo "$inputs ${1:-}" >> "$stamp"
echo "installed resnet_jax$extras into $venv"
