"""Checkpoint integrity: arrays whose bytes changed on disk, unreadable
checkpoints and metrics files, and checkpoints written before checksums were kept."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorstore as ts

from resnet_jax import checkpoints, evaluate, model_setup, models, train
from tests.conftest import (CIFAR10_IMAGE, REPO, load_script, refused_leaving_run_as_is,
                            untimed, write_unlabeled)
from tests.conftest import smoke_config as _smoke
from tests.test_reliability import _remove_metadata, _truncate_model_files  # resume's damage

DAMAGED_ARRAY = "params/layer3_0/conv2/kernel"  # the smoke model's largest: 36 KiB


@pytest.fixture
def finished(tmp_path, trained):
  """A copy of the `trained` run's workdir to damage: checkpoints 16, 32 and 48 (the best)."""
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  return workdir


def _flip_bytes(step_dir, item: str = "model", array: str = DAMAGED_ARRAY) -> None:
  """Inverts 64 bytes in the middle of an array's chunk in its OCDBT data file (d/...).

  The chunk is a zstd frame with no checksum, so the damage decodes, to other values,
  as the probe found: checked here by reading the array with tensorstore, past Orbax.
  """
  key = array.replace("/", ".")
  spec = {"driver": "zarr", "path": key,
          "kvstore": {"driver": "ocdbt", "base": f"file://{step_dir}/{item}/"}}
  before = ts.open(spec).result().read().result()
  chunk = ts.KvStore.open(spec["kvstore"]).result().read(f"{key}/0.0.0.0").result().value
  for path in glob.glob(os.path.join(step_dir, item, "**", "d", "*"), recursive=True):
    with open(path, "r+b") as f:
      data = f.read()
      start = data.find(chunk)
      if start >= 0:
        middle = start + len(chunk) // 2
        f.seek(middle)
        f.write(bytes(b ^ 0xFF for b in data[middle:middle + 64]))
  after = ts.open(spec).result().read().result()
  assert (after != before).any(), "the flip did not reach the array's chunk"


def _remove_model_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, "model"))


def test_an_array_whose_bytes_changed_is_set_aside_on_resume_and_the_previous_resumed(
    finished, trained, caplog):
  _, uninterrupted, _ = trained
  _flip_bytes(finished / "checkpoints" / "48")
  state, _ = train.train_and_evaluate(_smoke(), str(finished))
  assert (f"checkpoints/48: array model/{DAMAGED_ARRAY} does not match its checksum"
          in caplog.text)
  assert (finished / "checkpoints" / "48.corrupt").is_dir()  # kept, not deleted
  for ours, theirs in zip(jax.tree.leaves(jax.device_get((state.params, state.opt_state))),
                          jax.tree.leaves((uninterrupted.params, uninterrupted.opt_state))):
    np.testing.assert_array_equal(ours, theirs)  # epoch 3 again, from checkpoint 32


@pytest.mark.parametrize("damage,message", [
    (_flip_bytes, f": array model/{DAMAGED_ARRAY} does not match its checksum: the "
                  "checkpoint's bytes changed"),
    (_truncate_model_files, " is unreadable ("),
    (_remove_metadata, " is unreadable (FileNotFoundError: "),
    (_remove_model_item, " is unreadable (KeyError: 'Item \"model\" was not found"),
], ids=["flip", "truncate", "no_metadata", "no_model"])
def test_eval_refuses_a_damaged_best_checkpoint_in_one_line(finished, damage, message):
  damage(str(finished / "checkpoints" / "48"))
  result = subprocess.run(
      [sys.executable, "-m", "resnet_jax.main", "--config", "configs/smoke.py", "--mode", "eval",
       "--workdir", str(finished)], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {finished}/checkpoints/48{message}"), last


def test_predict_refuses_a_changed_array_and_an_intact_step_still_evaluates(finished,
                                                                              tmp_path):
  _flip_bytes(finished / "checkpoints" / "48")
  with pytest.raises(checkpoints.DamagedCheckpointError, match=r"checkpoints/48: array model/"):
    evaluate.predict(_smoke(), str(finished), write_unlabeled(tmp_path), str(tmp_path / "p.csv"))
  assert evaluate.evaluate_checkpoint(_smoke(), str(finished), step=32)["step"] == 32


def test_a_garbage_metrics_file_does_not_stop_eval_or_resume(finished, trained, caplog):
  _, _, history = trained
  for step in (32, 48):
    (finished / "checkpoints" / str(step) / "metrics" / "metrics").write_bytes(b"\xff{garbage")
  best = max(history, key=lambda h: (h["eval_accuracy"], h["epoch"]))
  metrics = evaluate.evaluate_checkpoint(_smoke(), str(finished))
  assert metrics["step"] == 16 * best["epoch"]  # ranked by the accuracy in meta instead
  assert metrics["chosen"] == f"best validation accuracy, {best['eval_accuracy']:.4f}"
  assert f"ignoring the unusable metrics file {finished}/checkpoints/48/metrics/metrics" \
      in caplog.text
  _, resumed = train.train_and_evaluate(_smoke(num_epochs=4), str(finished))
  assert untimed(resumed[:3]) == untimed(history) and len(resumed) == 4


def _edit_meta(step_dir, edit) -> None:
  """Rewrites a checkpoint's meta JSON as edit(meta) returns it, as a stranger could."""
  path = os.path.join(step_dir, "meta", "metadata")
  with open(path) as f:
    meta = json.load(f)
  with open(path, "w") as f:
    json.dump(edit(meta), f)


@pytest.mark.parametrize("edit,message", [
    (lambda meta: [meta], r"meta is a JSON list, not an object"),
    (lambda meta: {**meta, "epoch_step": "3"}, r"meta: epoch_step='3' is not int"),
    (lambda meta: {**meta, "epoch": True}, r"meta: epoch=True is not int"),
    (lambda meta: {**meta, "epoch_step": -1}, r"meta: epoch=3, epoch_step=-1: negative"),
    (lambda meta: {**meta, "epoch_seconds": float("nan")},
     r"meta: epoch_seconds=nan: not a number of seconds"),
    (lambda meta: {**meta, "checksum": "md4"}, r"meta: checksum='md4' is not one of \["),
    (lambda meta: {**meta, "checksum": "shake_128"}, r"meta: checksum='shake_128' is not one"),
    (lambda meta: {**meta, "checksums": {"model": [1]}},
     r"meta: checksums is not \{item: \{array path: hex digest\}\}"),
    (lambda meta: {**meta, "history": [1, 2, 3]}, r"meta: history is not a list of per-epoch"),
    (lambda meta: {**meta, "layout": 99}, r"meta: layout=99: written by a newer resnet_jax"),
    (lambda meta: {**meta, "model": {"name": "resnet9000"}},
     r"meta: model=\{'name': 'resnet9000'\} is no model of this package"),
])
def test_a_meta_a_stranger_edited_is_named_by_resume_and_eval_and_nothing_changes(
    finished, edit, message):
  """meta is JSON anyone can write: a value the code reads but did not write stops resume
  and eval before any compute, naming the file and key, and sets nothing aside."""
  _edit_meta(finished / "checkpoints" / "48", edit)
  where = re.escape(f"{finished}/checkpoints/48/") + message
  refused_leaving_run_as_is(_smoke(num_epochs=4), str(finished), checkpoints.CheckpointError,
                            where)
  with pytest.raises(checkpoints.CheckpointError, match=where):
    evaluate.evaluate_checkpoint(_smoke(), str(finished), step=48)


def test_resume_refuses_a_config_whose_train_state_differs_instead_of_setting_all_aside(
    finished):
  """Another optimizer's state is no damage: the run stops, naming the arrays that differ,
  with every checkpoint where it was (before, each was set aside and the run began anew)."""
  refused_leaving_run_as_is(
      _smoke(num_epochs=4, **{"optimizer.name": "sgd"}), str(finished),
      checkpoints.CheckpointError,
      re.escape(f"{finished}/checkpoints/48 cannot be restored with this config: its 'train' "
                "arrays differ from the ones this config trains (only in the checkpoint: ")
      + r"opt_state/.*mu/.* and \d+ more; only in this config's: opt_state/\S*trace/.*\); "
      r"resume with the run's config.optimizer settings")


def test_resume_refuses_a_mid_epoch_checkpoint_past_this_config_s_epoch(finished):
  """A checkpoint saved after step 20 of an epoch (as a run at batch 16, 32 steps an epoch,
  saves one: its meta edited so) cannot resume at batch 32's 16 steps an epoch."""
  _edit_meta(finished / "checkpoints" / "48", lambda meta: {**meta, "epoch_step": 20})
  refused_leaving_run_as_is(
      _smoke(num_epochs=4), str(finished), checkpoints.CheckpointError,
      r"was saved after step 20 of an epoch, and this config's epochs have 16 steps "
      r"\(config.batch_size or config.data.train_split changed\)")


def test_converted_weights_are_checksummed_and_verified(tmp_path):
  config = _smoke()
  model = model_setup.build_model(config)
  variables = models.init_variables(model, jax.random.PRNGKey(0), CIFAR10_IMAGE)
  checkpoints.save_model(str(tmp_path), 0, variables, models.model_config(config.model.name,
                                                                          model), source="test")
  _, restored, meta = checkpoints.restore_model(str(tmp_path), CIFAR10_IMAGE)
  assert meta["checksum"] == checkpoints.CHECKSUM
  assert len(meta["checksums"]["model"]) == len(jax.tree.leaves(restored))
  _flip_bytes(tmp_path / "checkpoints" / "0")
  with pytest.raises(checkpoints.DamagedCheckpointError,
                     match=f"checkpoints/0: array model/{DAMAGED_ARRAY} does not match"):
    checkpoints.restore_model(str(tmp_path), CIFAR10_IMAGE)


def test_a_workdir_from_before_checksums_restores_unverified_with_one_warning(tmp_path, caplog):
  workdir = tmp_path / "v1"
  shutil.copytree(os.path.join(REPO, "tests", "data", "v1_workdirs", "resnet"), workdir)
  checkpoints._warn_once.cache_clear()  # pylint: disable=protected-access  # once a process
  for step in (16, 21):
    _, variables, meta = checkpoints.restore_model(str(workdir), CIFAR10_IMAGE, step)
    assert "checksums" not in meta and jax.tree.leaves(variables)
  assert caplog.text.count("written before checksums were kept") == 1


def test_the_checksum_benchmark_runs_tiny(capsys, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["scripts/benchmark_checksums.py", "--tiny", "--repeats", "1"])
  load_script("benchmark_checksums").main()  # in this process: its imports are already paid for
  report = json.loads(capsys.readouterr().out)
  assert report["command"] == "scripts/benchmark_checksums.py --tiny --repeats 1"
  assert report["bytes_hashed"] > 0 and report["hash_on_save_s"] > 0
