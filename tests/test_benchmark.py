"""scripts/benchmark.py runs and reports what issue 7 asks for (speed targets live in docs)."""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_benchmark_prints_its_json_with_the_pytorch_comparison():
  result = subprocess.run([sys.executable, "scripts/benchmark.py", "--model", "shallow",
                           "--batch_size", "8", "--steps", "1", "--rounds", "1",
                           "--compare_torch"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(result.stdout)
  assert report["command"].startswith("scripts/benchmark.py --model shallow")
  for key in ("train_images_per_s", "eval_images_per_s", "compile_s", "torch_train_images_per_s",
              "train_speed_ratio_jax_over_torch", "peak_host_rss_mb", "achieved_flops_per_s"):
    assert report[key] > 0, key
  # XLA's count for a train step (forward + backward) of the 2.78M-parameter model.
  assert 1.5e9 < report["train_flops_per_image"] < 3.5e9
