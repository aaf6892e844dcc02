"""scripts/race.py, shrunk to seconds (--tiny): both sides run from process start and report."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, load_script, write_cifar_dir


def test_race_runs_both_sides_and_reports_their_times_and_accuracies(tmp_path):
  data, _ = write_cifar_dir(str(tmp_path), per_batch=60)  # 300 training examples
  out = tmp_path / "out"
  command = [sys.executable, "scripts/race.py", "--data", data, "--out", str(out), "--tiny",
             "--skip_warm"]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((out / "race.json").read_text())
  assert report["tiny"] and sorted(report["runs"]) == ["jax_cold", "torch"]
  for name, run in report["runs"].items():
    assert 0 < run["before_first_step_s"] < run["wall_s"], name
    assert run["loop_s"] == run["first_epoch_s"] > 0 and run["images_per_s"] > 0, name
    assert 0 <= run["eval_accuracy"] <= 1 and 0 <= run["eval_tta_accuracy"] <= 1, name
    assert run["reached_target"] is False and run["time_to_target_s"] is None  # random data
  assert "fast_muon.py" in report["runs"]["jax_cold"]["command"]
  assert report["wall_over_torch"]["jax_cold"] == round(
      report["runs"]["jax_cold"]["wall_s"] / report["runs"]["torch"]["wall_s"], 2)
  assert json.loads(result.stdout) == report["wall_over_torch"]
  again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
  assert again.returncode != 0 and "is not empty" in again.stderr  # no run resumed as a race
  assert json.loads((out / "race.json").read_text()) == report


def test_a_missing_data_path_is_one_line_before_anything_is_made(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["race.py", "--data", str(tmp_path / "none"), "--out",
                                    str(tmp_path / "out")])
  with pytest.raises(SystemExit) as info:
    load_script("race").main()
  assert info.value.code == f"error: --data {tmp_path}/none does not exist"
  assert not (tmp_path / "out").exists()
