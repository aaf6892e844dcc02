#!/usr/bin/env bash
# CI's Colab step: Colab's TPU runtime emulated on this CPU. A fresh environment (no pip
# cache) gets the runtime's preinstalled versions (.ci/colab_tpu_versions.txt; CPU jaxlib
# instead of libtpu; Colab's Python 3.13 where this machine has it), then papermill executes
# scripts/colab_tpu.ipynb on it end to end, the notebook's own install cell included, in a
# tiny CPU mode (its parameters cell: one epoch of 64 images, the backend check for "cpu",
# an archive in CIFAR's format generated here and served from a file:// URL, since CIFAR's
# site is out of reach). It runs twice on one workdir, as a user reruns it after a runtime
# restart: the second run must resume. Then the runtime's versions must still be in place,
# but for the one the notebook says it upgrades.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-/tmp/resnet_jax-colab}
work=$(mktemp -d)
python=python3
for candidate in python3.13 "$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3.13; do
  if "$candidate" -c "" 2>/dev/null; then python=$candidate; break; fi
done
echo "CI: $("$python" --version) for Colab's 3.13"
rm -rf "$venv"
"$python" -m venv "$venv"
pip() { "$venv/bin/python" -m pip --quiet --no-cache-dir "$@"; }
pip install --upgrade "pip>=24"
pip install -r .ci/colab_tpu_versions.txt
pip install papermill ipykernel  # the notebook runner and its kernel, as Colab's own
"$venv/bin/python" - "$work/served" <<'PY'
import os, pickle, sys, tarfile
import numpy as np
rng, root = np.random.default_rng(0), sys.argv[1]
os.makedirs(os.path.join(root, "cifar-10-batches-py"))
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
  with open(os.path.join(root, "cifar-10-batches-py", name), "wb") as f:
    pickle.dump({b"data": rng.integers(0, 256, (64, 3072), dtype=np.uint8),
                 b"labels": [int(x) for x in rng.integers(0, 10, 64)]}, f)
with tarfile.open(os.path.join(root, "cifar-10-python.tar.gz"), "w:gz") as tar:
  tar.add(os.path.join(root, "cifar-10-batches-py"), arcname="cifar-10-batches-py")
PY
archive="$work/served/cifar-10-python.tar.gz"
md5=$(md5sum "$archive" | cut -d' ' -f1)
execute() {  # $1: the executed copy
  "$venv/bin/python" -m papermill --no-progress-bar --log-output scripts/colab_tpu.ipynb "$1" \
      -p REPO "$PWD" -p WORKDIR "$work/run" -p DATA_DIR "$work/data" \
      -p ARCHIVE_URL "file://$archive" -p ARCHIVE_MD5 "$md5" -p EXPECT_BACKEND cpu \
      -y 'EXTRA_FLAGS: ["--config.num_epochs=1", "--config.data.train_split=train[:64]",
                        "--config.data.eval_split=test[:32]", "--config.batch_size=32",
                        "--config.eval_batch_size=32"]'
}
execute "$work/first.ipynb"
execute "$work/rerun.ipynb"
grep -q "resuming from" "$work/rerun.ipynb" || { echo "CI: the rerun did not resume" >&2; exit 1; }
"$venv/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE \
    '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy|absl-py|tensorflow|clu|ml.collections|dm-pix)=='
"$venv/bin/python" -m pip install --quiet --no-cache-dir --dry-run -r .ci/colab_tpu_versions.txt \
    --report "$work/kept.json" >/dev/null 2>&1
# The one the notebook says it moves: absl-py, for the newest chex (dm-pix's dependency).
"$venv/bin/python" -c "import json, sys
changed = {c['metadata']['name'] for c in json.load(open(sys.argv[1]))['install']}
assert changed <= {'absl-py'}, f'the notebook changed {sorted(changed)} of the runtime'
print('CI: the runtime versions the notebook keeps are kept; it upgraded', sorted(changed))
" "$work/kept.json"
