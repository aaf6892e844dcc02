"""scripts/cpu_settings.py and scripts/benchmark_convolution.py, shrunk to seconds: what
docs/performance.md's CPU-setting rows and convolution routes come from."""

import json
import re
import subprocess
import sys

import pytest

from resnet_jax import xla_cpu
from tests.conftest import REPO, load_script


def test_each_cpu_setting_row_runs_the_benchmark_with_that_setting_changed(tmp_path):
  out = tmp_path / "settings.json"
  result = subprocess.run(
      [sys.executable, "scripts/cpu_settings.py", "--tiny", "--out", str(out),
       "--only", "float32, BatchNorm backward by autodiff", "--only", "bfloat16, no oneDNN"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report == json.loads(result.stdout)
  assert [row["setting"] for row in report["rows"]] == [
      "float32, BatchNorm backward by autodiff", "bfloat16, no oneDNN (Eigen)"]
  for row in report["rows"]:
    assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
  bench = report["rows"][1]["benchmark"]
  assert bench["dtype"] == "bfloat16" and bench["overrides"] == ["cpu.bfloat16_xla_options={}"]
  # The autodiff row's own command reproduces it (benchmark.py's would time the other).
  command = report["rows"][0]["benchmark"]["command"]
  assert command.startswith("scripts/cpu_settings.py --model shallow --batch_size 128 --only "
                            "'float32, BatchNorm backward by autodiff'") and "--out" not in command


def test_a_failing_setting_is_recorded_and_the_rest_still_run(tmp_path):
  """Rows take minutes each: one that fails (here a benchmark.py that is no script) must not
  take the finished ones with it."""
  cpu_settings = load_script("cpu_settings")
  out = tmp_path / "settings.json"
  bad = tmp_path / "benchmark.py"
  bad.write_text("raise SystemExit('error: no such option')")
  cpu_settings.BENCHMARK = str(bad)
  sys_argv = sys.argv
  try:
    sys.argv = ["cpu_settings.py", "--tiny", "--out", str(out), "--only", "no oneDNN"]
    with pytest.raises(SystemExit, match="some settings failed"):
      cpu_settings.main()
  finally:
    sys.argv = sys_argv
  rows = json.loads(out.read_text())["rows"]
  assert rows == [{"setting": "bfloat16, no oneDNN (Eigen)",
                   "error": "exited with 1: error: no such option"}]


@pytest.mark.parametrize("override,message", [
    ("cpu.fusion_barier=False", r"the config has no key 'cpu.fusion_barier'"),
    ("optimiser.momentum=0.9", r"the config has no key 'optimiser.momentum'"),
    ("batch_size", r"expected KEY=VALUE"),
    ("data.dataset.c=1", r"the config has no key 'data.dataset.c'"),  # a value, no section
    ("num_epochs=1.5", r"Could not override"),  # ConfigDict's own words on the type
    ("data.dataset=cifar100", r"'cifar100' is not a Python literal \(quote strings"),
])
def test_a_benchmark_override_the_config_cannot_take_is_one_line(override, message):
  benchmark = load_script("benchmark")
  config = benchmark.default_config.get_config("shallow")
  with pytest.raises(SystemExit, match=f"^error: --override {re.escape(repr(override))}: "
                                       + message):
    benchmark._apply(config, override)  # pylint: disable=protected-access
  benchmark._apply(config, "cpu.xla_options.xla_cpu_anything=1")  # XLA's names are open
  benchmark._apply(config, "cpu.fusion_barriers=False")
  assert config.cpu.xla_options.xla_cpu_anything == 1 and config.cpu.fusion_barriers is False


def test_every_weight_gradient_route_computes_the_same_gradient(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["benchmark_convolution.py", "--size", "6", "--channels",
                                    "8", "--batch", "4"])
  load_script("benchmark_convolution").main()
  rows = json.loads(capsys.readouterr().out)["rows"]
  assert len(rows) == 2 * 4 + 2 * 5  # float32 has no separate float32 route
  for row in rows:
    assert row["ms"] > 0
    if row["route"] != "forward":  # bfloat16's rounding of sums over 4 * 6 * 6 products
      assert row["max_error_relative"] < (1e-5 if row["dtype"] == "float32" else 2e-2), row
  onednn = xla_cpu.onednn_bfloat16_convolutions()
  for row in rows:
    if row["route"] == "forward" and row["dtype"] == "bfloat16":
      assert row["calls_onednn"] == (onednn and row["setting"] == "onednn")
    if row["setting"] == "eigen":
      assert not row["calls_onednn"]
