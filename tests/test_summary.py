"""The torchsummary-like layer table."""

import subprocess
import sys

from resnet_jax import models, summary
from tests.conftest import CIFAR10_IMAGE


def test_summary_cli_prints_the_shallow_total():
  result = subprocess.run([sys.executable, "-m", "resnet_jax.summary", "--model", "shallow"],
                          capture_output=True, text=True, check=True)
  assert "Total params: 2,777,674" in result.stdout
  assert "fc (Dense)" in result.stdout and "[1, 10]" in result.stdout


def test_deep_table_rows_sum_to_the_count_and_show_the_upsampling_pool():
  rows = summary.layer_rows(models.get_model("deep"), CIFAR10_IMAGE)
  assert sum(n for *_, n in rows) == 4_999_689
  shapes = {path: shape for path, _, shape, _ in rows}
  assert shapes["layer2_3"] == (1, 16, 16, 64)
  assert shapes["mid_pool"] == (1, 24, 24, 64)
  assert shapes["head_pool"] == (1, 3, 3, 256)
  assert "Total params: 4,999,689" in summary.format_table(models.get_model("deep"), CIFAR10_IMAGE)
