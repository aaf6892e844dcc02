"""scripts/seed_sweep.py: variants times seeds, each run's result and each variant's spread."""

import json
import statistics
import subprocess
import sys

import pytest

from tests.conftest import REPO, load_script, write_cifar_dir


def _sweep(tmp_path, *args):
  return subprocess.run([sys.executable, "scripts/seed_sweep.py", "--out", str(tmp_path / "out"),
                         *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_every_seed_of_every_variant_runs_and_a_failed_one_is_recorded(tmp_path):
  data, _ = write_cifar_dir(str(tmp_path))
  result = _sweep(tmp_path, "--config", "fast_muon", "--data", data, "--seeds", "2",
                  "--parallel", "2", "--tiny", "--variant", "base=",
                  "--variant", "bad=--config.optimizer.learning_rate=-1")
  out = tmp_path / "out"
  assert result.returncode != 0 and "some runs failed" in result.stderr, result.stderr[-3000:]
  report = json.loads((out / "seed_sweep.json").read_text())
  base = report["runs"]["base"]
  assert sorted(base) == ["0", "1"] and all(base[s]["ok"] for s in base)
  for seed, run in base.items():
    assert f"--config.seed={seed}" in run["command"] and f"base_seed{seed}" in run["command"]
    assert run["epochs"] == 1 and run["eval_tta_accuracy"] is not None
  summary = report["summary"]["base"]
  assert summary["seeds"] == 2
  assert summary["eval_tta_accuracy_mean"] == pytest.approx(
      statistics.fmean(r["eval_tta_accuracy"] for r in base.values()))
  bad = report["runs"]["bad"]
  assert sorted(bad) == ["0", "1"] and not any(r["ok"] for r in bad.values())
  assert "learning_rate" in (out / "bad_seed0.log").read_text()  # main's own message
  assert report["summary"]["bad"] == {"seeds": 0}
  assert "| base | 2 |" in result.stdout and "| bad | 0 | - | - |" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--variant", "bw3"], "expected NAME=FLAGS"),
    (["--variant", "a b=--x"], "expected NAME=FLAGS"),
    (["--variant", "a=", "--variant", "a=--x"], "'a' is given twice"),
    (["--seeds", "0"], "error: --seeds 0 and --parallel 1 must be >= 1"),
    (["--parallel", "0"], "error: --seeds 2 and --parallel 0 must be >= 1"),
    (["--config", "nope"], "error: --config 'nope': no configs/nope.py"),
    (["--config", "shallow_cpu", "--tiny"], "error: --tiny has no tiny model for 'shallow_cpu'"),
    (["--timeout", "0"], "error: --timeout 0.0 must be a positive number of seconds"),
])
def test_bad_arguments_are_named_before_anything_runs(tmp_path, args, message):
  result = _sweep(tmp_path, "--config", "fast", "--data", str(tmp_path / "none"), *args)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "out").exists()


def test_no_variant_means_one_named_base():
  assert load_script("seed_sweep").parse_variants([]) == {"base": []}
  assert load_script("seed_sweep").parse_variants(["w3=--a=1 --b='x y'"]) == {"w3": ["--a=1", "--b=x y"]}


def test_a_run_past_its_timeout_is_named_as_such(tmp_path):
  device_check = load_script("device_check")
  data, _ = write_cifar_dir(str(tmp_path))
  with open(tmp_path / "log", "w") as log, pytest.raises(
      RuntimeError, match=r"training configs/fast.py did not finish in its 1 s; stopped"):
    device_check.recipe("fast", data, str(tmp_path), True, log, timeout=1)


def test_a_workdir_of_other_flags_is_refused_not_reported_as_the_new_variant(tmp_path):
  seed_sweep, workdir = load_script("seed_sweep"), str(tmp_path / "base_seed0")
  seed_sweep.claim(workdir, ("--config.seed=0",))
  seed_sweep.claim(workdir, ("--config.seed=0",))  # the same run, resumed
  with pytest.raises(RuntimeError, match=r"base_seed0 holds a run of flags \['--config.seed=0'\], "
                                         r"not \['--config.optimizer.learning_rate=1', "):
    seed_sweep.claim(workdir, ("--config.optimizer.learning_rate=1", "--config.seed=0"))
  older = tmp_path / "base_seed1"  # a workdir from before the flags were recorded
  older.mkdir()
  with pytest.raises(RuntimeError, match=r"base_seed1 holds a run whose flags were not recorded"):
    seed_sweep.claim(str(older), ("--config.seed=1",))
