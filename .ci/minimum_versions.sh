#!/usr/bin/env bash
# CI's lower-bounds step: pyproject.toml's lowest versions (.ci/minimum_versions.txt, the `tf`
# extra's included) in a fresh environment installed without pip's cache, and the part of the
# suite that needs no PyTorch run on them: models, training and resume on both pipelines,
# config and command-line errors (absl's and ml_collections' lowest), checkpoints of older
# layouts, data sources, the TensorFlow-free path, and the readers of untrusted files on
# numpy 2.0's pickles.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-/tmp/resnet_jax-minimum-versions}
python=python3
for candidate in python3.11 "$(pyenv root 2>/dev/null)"/versions/3.11*/bin/python3.11; do
  if "$candidate" -c "" 2>/dev/null; then python=$candidate; break; fi  # requires-python's lowest
done
# Said, so a log never passes off another Python's run as the lowest's.
echo "lower bounds on $("$python" --version 2>&1) ($python)"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --no-cache-dir --upgrade "pip>=24"
"$venv/bin/python" -m pip install --quiet --no-cache-dir -c .ci/minimum_versions.txt \
    -e ".[tf]" "pytest>=8" "pytest-xdist>=3.6" "hypothesis>=6.100"
"$venv/bin/python" -m pip list --format=freeze 2>/dev/null \
    | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|clu|dm-pix|ml.collections|absl-py|numpy|tensorboard|matplotlib|tensorflow|tensorflow-datasets)=='
"$venv/bin/python" -m pytest -n 2 --dist loadfile -q -p no:cacheprovider \
    tests/test_models.py tests/test_train.py tests/test_config_validation.py \
    tests/test_checkpoint_layouts.py tests/test_fast_model.py tests/test_device_pipeline.py \
    tests/test_data_sources.py tests/test_download.py tests/test_console.py tests/test_pickles.py \
    tests/test_unlabeled.py
