"""Faults: preemption signals, SIGKILL, non-finite steps, corrupt checkpoints, full disks;
and determinism."""

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from resnet_jax import checkpoints, evaluate, preemption, train
from resnet_jax.data import sources
from tests.conftest import (CIFAR10_IMAGE, REPO, on_train_batches, poison_batch,
                            signal_at_batch, untimed, write_unlabeled)
from tests.conftest import smoke_config as _smoke


@pytest.mark.parametrize("pipeline,signum,code", [("tfdata", signal.SIGTERM, 143),
                                                   ("tfdata", signal.SIGINT, 130),
                                                   ("device", signal.SIGTERM, 143)])
def test_signal_mid_epoch_checkpoints_and_the_rerun_matches_uninterrupted(
    tmp_path, trained, pipeline, signum, code):
  config = _smoke(**{"data.pipeline": pipeline})
  if pipeline == "tfdata":
    _, uninterrupted, full_history = trained
  else:
    uninterrupted, full_history = train.train_and_evaluate(config, str(tmp_path / "whole"))
  workdir = tmp_path / "run"
  with pytest.MonkeyPatch.context() as patch:
    signal_at_batch(patch, 21, signum)  # step 5 of epoch 2
    # The run's clock gains 1,000 s at each reading: epoch 2's part before the stop is
    # over 1,000 s, which the resumed run's clock must carry on from.
    ticks = itertools.count()
    patch.setattr(train, "time", types.SimpleNamespace(
        perf_counter=lambda: time.perf_counter() + 1000 * next(ticks)))
    with pytest.raises(preemption.Preempted) as info:
      train.train_and_evaluate(config, str(workdir))
  assert info.value.code == code
  assert sorted(os.listdir(workdir / "checkpoints")) == ["16", "21"]
  state, history = train.train_and_evaluate(config, str(workdir))
  epoch_2_seconds = history[1]["elapsed_s"] - history[0]["elapsed_s"]
  assert 1000 < epoch_2_seconds < 1000 + 600 and 0 < history[1]["images_per_s"] < float("inf")
  for ours, theirs in zip(jax.tree.leaves(jax.device_get((state.params, state.opt_state))),
                          jax.tree.leaves(jax.device_get((uninterrupted.params,
                                                          uninterrupted.opt_state)))):
    np.testing.assert_array_equal(ours, theirs)
  assert untimed(history) == untimed(full_history)  # epoch 2's metrics span the restart
  # The resumed run's workdir evaluates and predicts: the mid-epoch checkpoint (no accuracy)
  # is among the last 3 kept, and once broke choosing the best.
  assert "21" in os.listdir(workdir / "checkpoints")
  best = max(history, key=lambda h: (h["eval_accuracy"], h["epoch"]))
  metrics = evaluate.evaluate_checkpoint(config, str(workdir))
  assert metrics["step"] == 16 * best["epoch"]
  assert metrics["chosen"] == f"best validation accuracy, {best['eval_accuracy']:.4f}"
  assert metrics["accuracy"] == pytest.approx(best["eval_accuracy"], abs=1e-6)
  result = evaluate.predict(config, str(workdir), write_unlabeled(tmp_path),
                            str(tmp_path / "p.csv"))
  assert result["count"] == 40 and result["checkpoint"] == metrics["checkpoint"]


def _epoch_2_after_its_checkpoint(workdir, then=lambda drawn, batch: batch):
  """A training-batch action: epoch 2's batches wait until checkpoint 16 (epoch 1's) is
  in place, so that a save on time is not refused as one already under way."""

  def action(drawn, batch):
    if drawn > 16:
      deadline = time.monotonic() + 60
      while not os.path.isdir(workdir / "checkpoints" / "16"):
        assert time.monotonic() < deadline, "epoch 1's checkpoint never appeared"
        time.sleep(0.01)
      time.sleep(0.05)  # Orbax marks the save finished just after its rename
    return then(drawn, batch)
  return action


def test_checkpoints_on_time_mid_epoch_and_a_crash_resumes_as_uninterrupted(tmp_path,
                                                                            trained):
  _, uninterrupted, full_history = trained
  config, workdir = _smoke(checkpoint_every_minutes=1e-9), tmp_path / "run"

  def crash(drawn, batch):
    if drawn == 27:  # 26 steps made, 10 of them in epoch 2; no signal, no epoch-end save
      raise RuntimeError("power cut")
    return batch

  with pytest.MonkeyPatch.context() as patch:
    on_train_batches(patch, _epoch_2_after_its_checkpoint(workdir, crash))
    with pytest.raises(RuntimeError, match="power cut"):
      train.train_and_evaluate(config, str(workdir))
  steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
  assert steps == [10, 16, 20], steps  # on time: the steps asked (every 10th), and epoch 1's
  state, history = train.train_and_evaluate(config, str(workdir))
  for ours, theirs in zip(jax.tree.leaves(jax.device_get((state.params, state.opt_state))),
                          jax.tree.leaves(jax.device_get((uninterrupted.params,
                                                          uninterrupted.opt_state)))):
    np.testing.assert_array_equal(ours, theirs)
  assert untimed(history) == untimed(full_history)


def test_no_checkpoint_on_time_after_a_nonfinite_step(tmp_path, monkeypatch):

  def nan_at_20(drawn, batch):  # step 19; every later step is a no-op until the run stops
    return {**batch, "image": batch["image"] * np.nan} if drawn == 20 else batch

  on_train_batches(monkeypatch, _epoch_2_after_its_checkpoint(tmp_path, nan_at_20))
  with pytest.raises(train.NonFiniteError, match=r"at step 19 \(epoch 2\)"):
    train.train_and_evaluate(_smoke(checkpoint_every_minutes=1e-9), str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert steps == [10, 16], steps  # step 20 was due, and would hold step 19's record


def test_sigterm_to_the_cli_exits_with_a_resume_message(tmp_path):
  process = subprocess.Popen(
      [sys.executable, "-m", "resnet_jax.main", "--config", "configs/smoke.py", "--workdir",
       str(tmp_path), "--config.num_epochs=200"], cwd=REPO, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  for line in process.stderr:  # wait until training is under way
    if "epoch 1/200" in line or time.time() > deadline:
      break
  process.send_signal(signal.SIGTERM)
  _, rest = process.communicate(timeout=120)
  assert process.returncode == 143
  assert "SIGTERM: stopped at step" in rest and "rerun the same command to resume" in rest
  assert rest.count("stopped at step") == 1, rest  # each line once
  assert "tracked_metric" not in rest, rest  # Orbax's note on the mid-epoch save: log only
  assert os.listdir(tmp_path / "checkpoints")


def test_same_config_and_seed_give_identical_metrics(tmp_path, trained):
  _, _, history = trained
  _, again = train.train_and_evaluate(_smoke(), str(tmp_path))
  assert untimed(again) == untimed(history)


@pytest.mark.parametrize("pipeline", ["tfdata", "device"])
def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch, pipeline):
  poison_batch(monkeypatch, 20)  # step 19, in epoch 2
  with pytest.raises(train.NonFiniteError,
                     match=r"at step 19 \(epoch 2\).*Last good checkpoint: .*checkpoints/16"):
    train.train_and_evaluate(_smoke(**{"data.pipeline": pipeline}), str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["16"]
  _, variables, _ = checkpoints.restore_model(str(tmp_path), CIFAR10_IMAGE)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


@pytest.mark.parametrize("pipeline", ["tfdata", "device"])
def test_skip_nonfinite_steps_skips_and_trains_on(tmp_path, monkeypatch, pipeline):
  poison_batch(monkeypatch, 20)
  state, history = train.train_and_evaluate(
      _smoke(skip_nonfinite_steps=True, **{"data.pipeline": pipeline}), str(tmp_path))
  assert [h["skipped_steps"] for h in history] == [0, 1, 1]
  assert int(state.first_nonfinite_step) == 19
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  assert np.isfinite(history[1]["train_loss"]) and history[-1]["eval_accuracy"] > 0.6


def _truncate_model_files(step_dir):
  for root, _, files in os.walk(os.path.join(step_dir, "model")):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _remove_metadata(step_dir):
  os.remove(os.path.join(step_dir, "meta", "metadata"))


@pytest.mark.parametrize("damage", [_truncate_model_files, _remove_metadata])
def test_unreadable_latest_checkpoint_is_set_aside_and_the_previous_resumed(
    tmp_path, trained, damage, caplog):
  _, uninterrupted, full_history = trained
  train.train_and_evaluate(_smoke(num_epochs=2), str(tmp_path))
  damage(str(tmp_path / "checkpoints" / "32"))
  state, history = train.train_and_evaluate(_smoke(), str(tmp_path))
  assert "skipping unreadable checkpoint" in caplog.text and "checkpoints/32" in caplog.text
  assert (tmp_path / "checkpoints" / "32.corrupt").is_dir()  # kept, not deleted
  jax.tree.map(np.testing.assert_array_equal,  # the trees' structures too
               jax.device_get((state.params, state.batch_stats, state.opt_state)),
               (uninterrupted.params, uninterrupted.batch_stats, uninterrupted.opt_state))
  assert untimed(history) == untimed(full_history)  # epoch 1 from step 16, 2 and 3 redone


def _refuse_work(*args, **kwargs):
  raise AssertionError("data was loaded or a step built before the error")


@pytest.fixture
def small_disk(tmp_path):
  """A 2 MiB tmpfs (the machines here run as root); None where mounting is not allowed."""
  mount = tmp_path / "small_disk"
  mount.mkdir()
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
  yield mount if result.returncode == 0 else None
  if result.returncode == 0:
    subprocess.run(["umount", "-l", str(mount)], check=False)  # -l: orbax threads may linger


def test_disk_full_during_a_save_is_a_clear_error_and_earlier_checkpoints_survive(
    tmp_path, small_disk, monkeypatch):
  if small_disk is None:  # no mount: inject the OSError a full disk raises instead
    workdir = tmp_path / "run"
    save = checkpoints.save_training

    def save_until_full(manager, step, *args):
      if step > 48:
        raise OSError(28, "No space left on device")
      save(manager, step, *args)

    monkeypatch.setattr(checkpoints, "save_training", save_until_full)
  else:
    workdir = small_disk / "run"
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"No space left on device.*complete checkpoints are intact"):
    train.train_and_evaluate(_smoke(num_epochs=12, keep_checkpoints=12), str(workdir))
  complete = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert complete and complete == list(range(16, 16 * len(complete) + 1, 16))
  for step in complete:  # every complete checkpoint still restores
    _, variables, meta = checkpoints.restore_model(str(workdir), CIFAR10_IMAGE, step)
    assert meta["epoch"] == step // 16
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


def test_a_curves_figure_that_cannot_be_written_is_a_warning_after_a_finished_run(
    tmp_path, trained, monkeypatch, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  def full_disk(*_):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(train.plots, "plot_curves", full_disk)
  state, history = train.train_and_evaluate(_smoke(), str(workdir))
  assert int(state.step) == 48 and untimed(history) == untimed(trained[2])
  assert (f"{workdir}/curves.png cannot be written (No space left on device); the run is "
          "complete") in caplog.text


def test_unwritable_workdir_fails_before_compute(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "load_split", _refuse_work)  # the first work after the checks
  monkeypatch.setattr(train, "Steps", _refuse_work)
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  with pytest.raises(checkpoints.CheckpointError, match=r"--workdir .*a_file/run is not writable"):
    train.train_and_evaluate(_smoke(), str(blocker / "run"))
  assert blocker.read_text() == "not a directory"


def test_chaos_script_refuses_a_used_workdir_named_from_where_it_was_typed(tmp_path):
  """Finished runs there would resume at once and "match"; a relative --workdir is the
  user's, though the runs start in the repository's root."""
  (tmp_path / "chaos" / "uninterrupted").mkdir(parents=True)
  result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "chaos_resume.py"),
                           "--workdir", "chaos"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == ("error: --workdir chaos is not empty; the "
                                                    "runs start from nothing")


def test_chaos_script_sigkills_resumes_and_matches(tmp_path):
  result = subprocess.run([sys.executable, "scripts/chaos_resume.py", "--kills", "1",
                           "--epochs", "2", "--workdir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
  report = json.loads(result.stdout)
  assert result.returncode == 0, result.stderr[-2000:]
  assert len(report["kills"]) >= 1 and report["final_exit_code"] == 0
  assert report["arrays_identical"] and report["history_identical"]
