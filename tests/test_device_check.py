"""scripts/device_check.py, shrunk to seconds (--tiny): known to work before a GPU runs it."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, load_script, write_cifar_dir


def test_device_check_runs_every_part_in_its_tiny_mode(tmp_path):
  data, _ = write_cifar_dir(str(tmp_path))  # 100 training examples
  out = tmp_path / "out"
  result = subprocess.run([sys.executable, "scripts/device_check.py", "--data", data, "--out",
                           str(out), "--tiny"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:] + \
      (out / "device_check.log").read_text()[-3000:]
  report = json.loads((out / "device_check.json").read_text())
  assert report["tiny"] and report["device"]["backend"] == "cpu"
  assert list(report["parts"]) == ["benchmark_shallow", "fast", "benchmark_deep", "shallow"]
  for name in ("benchmark_shallow", "benchmark_deep"):
    bench = report["parts"][name]
    for key in ("train_images_per_s", "eval_images_per_s", "torch_train_images_per_s",
                "train_speed_ratio_jax_over_torch", "eval_over_train", "achieved_flops_per_s"):
      assert bench[key] > 0, (name, key)
    assert bench["dtype"] == "bfloat16" and bench["tiny"]
  for name in ("shallow", "fast"):
    run = report["parts"][name]
    assert run["ok"] and run["epochs"] == 1 and 0 <= run["eval_accuracy"] <= 1
    assert run["wall_s"] > 0 and run["per_epoch"][0]["elapsed_s"] > 0
  assert report["parts"]["fast"]["eval_tta_accuracy"] is not None
  assert "reached_target" in report["parts"]["fast"]
  assert "epoch 1/1" in (out / "device_check.log").read_text()


def test_the_benchmark_counts_the_flops_of_the_seed_models_train_step(monkeypatch, capsys):
  """The count device_check's full-size benchmark reports, of the 2.78M-parameter model's train
  step (forward + backward), which --tiny's toy model does not show."""
  monkeypatch.setattr(sys, "argv", ["benchmark.py", "--model", "shallow", "--dtype", "bfloat16",
                                    "--batch_size", "8", "--flops_only"])
  load_script("benchmark").main()  # in this process: its imports are already paid for
  assert 1.5e9 < float(capsys.readouterr().out.split()[-1]) < 3.5e9


def test_the_benchmark_times_a_config_s_own_model_and_optimizer(monkeypatch, capsys):
  """--config: the fast recipes' step (Muon, parameter groups) as their runs train it."""
  monkeypatch.setattr(sys, "argv", ["benchmark.py", "--config", "configs/fast_muon.py", "--tiny",
                                    "--batch_size", "8", "--steps", "1", "--rounds", "1",
                                    "--dtype", "float32"])
  load_script("benchmark").main()
  result = json.loads(capsys.readouterr().out)
  assert result["model"] == "fast" and result["config"] == "configs/fast_muon.py"
  assert result["train_images_per_s"] > 0 and result["eval_images_per_s"] > 0


def test_the_benchmark_refuses_a_pytorch_side_for_a_config(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["benchmark.py", "--config", "configs/fast_muon.py",
                                    "--compare_torch"])
  with pytest.raises(SystemExit) as info:
    load_script("benchmark").main()
  assert info.value.code == 2  # argparse's usage error, before any model is built
  assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
      "error: --compare_torch has PyTorch models for --model only, not for --config")


def test_a_zip_is_unpacked_into_the_folder_the_recipes_read(tmp_path):
  """The shared make_cifar10_batches.py ZIP OUT_DIR writes the batches into OUT_DIR itself."""
  device_check = load_script("device_check")
  shared = tmp_path / "shared"
  shared.mkdir()
  (shared / "cifar10-train-jpeg-q75.zip").write_bytes(b"")
  (shared / "make_cifar10_batches.py").write_text(  # the real one's contract, without JPEGs
      "import os, sys\nos.makedirs(sys.argv[2])\n"
      "open(os.path.join(sys.argv[2], 'data_batch_1'), 'wb').close()\n")
  out = tmp_path / "out"
  with open(tmp_path / "log", "w") as log:
    data_dir = device_check._cifar_dir(str(shared / "cifar10-train-jpeg-q75.zip"), str(out), log)
  assert os.path.isfile(os.path.join(data_dir, "data_batch_1"))
  assert os.path.basename(data_dir) == "cifar-10-batches-py"
