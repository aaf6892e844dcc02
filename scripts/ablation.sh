#!/usr/bin/env bash
# docs/recipes.md's ablation table: configs/fast.py shortened to 4 epochs (its warm-up
# and whitening-bias epochs scaled alike), each piece switched off alone.
#
#   [SEED=N] bash scripts/ablation.sh DATA_DIR OUT_DIR [VARIANT ...]
#
# DATA_DIR is a cifar-10-batches-py directory; each variant trains into OUT_DIR/VARIANT,
# or OUT_DIR/VARIANT_seedN with SEED=N > 0 (the spread between seeds says which
# differences count); rerunning resumes or skips finished ones; a markdown table of the
# results follows.
set -euo pipefail
data=$1 out=$2
shift 2
declare -A changes=(
  [baseline]=""
  [no_lookahead]="--config.optimizer.lookahead_every=0"
  [random_flip]="--config.data.augment.alternating_flip=0 --config.data.augment.hflip=0.5"
  [zero_padded_crop]="--config.data.augment.reflect_crop=0 --config.data.augment.crop_padding=2"
  [no_label_smoothing]="--config.label_smoothing=0"
  [no_bn_bias_lr]="--config.optimizer.groups.bn_bias.lr_multiplier=1"
)
order=(baseline no_lookahead random_flip zero_padded_crop no_label_smoothing no_bn_bias_lr)
[ $# -gt 0 ] && order=("$@")
seed=${SEED:-0}
suffix=$([ "$seed" = 0 ] || echo "_seed$seed")
python=${PYTHON:-.venv/bin/python}
for name in "${order[@]}"; do
  [ -v "changes[$name]" ] || { echo "unknown variant $name: one of ${!changes[*]}" >&2; exit 2; }
  # shellcheck disable=SC2086  # the changes are separate flags
  "$python" -m resnet_jax.main --config configs/fast.py --workdir "$out/$name$suffix" \
      --config.data.source=files --config.data.dir="$data" --config.num_epochs=4 \
      --config.optimizer.warmup_epochs=0.92 --config.optimizer.groups.whiten_bias.epochs=1.2 \
      --config.seed="$seed" ${changes[$name]}
done
"$python" - "$out" "${order[@]/%/$suffix}" <<'PY'
import json, os, sys
out, names = sys.argv[1], sys.argv[2:]
print("| variant | hold-out | with TTA 2 | minutes (epochs) |\n|---|---|---|---|")
for name in names:
  with open(os.path.join(out, name, "history.json")) as f:
    h = json.load(f)[-1]
  print(f"| {name} | {h['eval_accuracy']:.2%} | {h.get('eval_tta_accuracy', float('nan')):.2%} "
        f"| {h['elapsed_s'] / 60:.1f} |")
PY
