#!/usr/bin/env bash
# Creates a virtual environment (default .venv, or $VENV) and installs resnet_jax
# into it, editable, with the exact versions in constraints.txt.
#   bash scripts/setup_env.sh          # the package
#   bash scripts/setup_env.sh test     # plus the test extra (pytest, CPU torch)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
extras=${1:+[$1]}
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade "pip>=24"
"$venv/bin/python" -m pip install --quiet -c constraints.txt -e ".$extras"
echo "installed resnet_jax$extras into $venv"
