#!/usr/bin/env bash
# Creates a virtual environment (default .venv, or $VENV) and installs resnet_jax
# into it, editable, with its `tf` extra (tf.data input, TFDS) and the exact
# versions in constraints.txt.
#   bash scripts/setup_env.sh          # the package
#   bash scripts/setup_env.sh test     # plus the test extra (pytest, CPU torch)
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
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade "pip>=24"
"$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".$extras"
echo "$inputs ${1:-}" >> "$stamp"
echo "installed resnet_jax$extras into $venv"
