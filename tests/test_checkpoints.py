"""Checkpoints: resume equals uninterrupted, N-to-M devices, eval and predict modes, errors."""

import csv
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from resnet_jax import (checkpoints, convert_torch, evaluate, files, model_setup, plots,
                        preemption, train, xla_cpu)
from resnet_jax.data import datasets, pickles, sources, unlabeled
from tests import torch_reference
from tests.conftest import (CIFAR10_IMAGE, REPO, signal_at_batch, untimed,
                            write_cifar100_dir, write_unlabeled)
from tests.test_data_sources import _Planted
from tests.conftest import smoke_config as _smoke



def _snapshot(directory):
  return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
          for root, _, files in os.walk(directory) for f in files}


def test_resume_continues_exactly_as_if_never_interrupted(tmp_path, trained):
  _, uninterrupted, full_history = trained
  workdir = str(tmp_path)
  train.train_and_evaluate(_smoke(num_epochs=1), workdir)  # "interrupted" after epoch 1
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["16"]  # 16 steps/epoch
  state, history = train.train_and_evaluate(_smoke(), workdir)  # resumes at epoch 2
  assert int(state.step) == int(uninterrupted.step)
  for ours, theirs in zip(jax.tree.leaves(jax.device_get((state.params, state.batch_stats,
                                                          state.opt_state))),
                          jax.tree.leaves((uninterrupted.params, uninterrupted.batch_stats,
                                           uninterrupted.opt_state))):
    np.testing.assert_array_equal(ours, theirs)  # bitwise on CPU
  assert untimed(history) == untimed(full_history)


def test_retention_keeps_the_last_k_and_the_best(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(_smoke(num_epochs=4, keep_checkpoints=1), workdir)
  with open(os.path.join(workdir, "history.json")) as f:
    accuracies = [h["eval_accuracy"] for h in json.load(f)]
  best = max(range(4), key=lambda i: (accuracies[i], i)) + 1
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == \
      sorted({16 * best, 16 * 4})


def test_eval_mode_writes_the_schema_and_matches_the_training_log(trained, monkeypatch):
  workdir, _, history = trained
  # dtype auto evaluates in the dtype the run trained in (float32), even on a CPU where it
  # would train in bfloat16.
  monkeypatch.setattr(xla_cpu, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
  metrics = evaluate.evaluate_checkpoint(_smoke(dtype="auto"), workdir)
  assert set(metrics) >= {"accuracy", "per_class_accuracy", "confusion_matrix", "num_examples",
                          "step", "split"}
  best = max(history, key=lambda h: (h["eval_accuracy"], h["epoch"]))
  assert metrics["step"] == 16 * best["epoch"]
  assert metrics["accuracy"] == pytest.approx(best["eval_accuracy"], abs=1e-6)
  assert metrics["num_examples"] == 256 and metrics["split"] == "test"
  matrix = np.array(metrics["confusion_matrix"])
  assert matrix.shape == (10, 10) and matrix.sum() == 256
  np.testing.assert_allclose(metrics["per_class_accuracy"], matrix.diagonal() / matrix.sum(1))
  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    assert json.load(f) == metrics
  assert os.path.getsize(os.path.join(workdir, "eval", "confusion_matrix.png")) > 1000
  first = evaluate.evaluate_checkpoint(_smoke(**{"eval.tta": 1}), workdir, step=16)
  assert first["step"] == 16 and first["tta"] == 1


def test_predict_writes_id_labels_csv(tmp_path, trained):
  workdir, _, _ = trained
  images, labels = sources.load_synthetic("test[:40]", {"train": 512, "test": 256})
  rows = images.transpose(0, 3, 1, 2).reshape(40, 3072)  # CIFAR's channel-major rows
  for name, payload in [("rows", {b"data": rows}),
                        ("nhwc", {b"data": images, b"ids": [f"img{i}".encode() for i in range(40)]})]:
    path = tmp_path / f"{name}.pkl"
    with open(path, "wb") as f:
      pickle.dump(payload, f)
    out = tmp_path / f"{name}.csv"
    assert evaluate.predict(_smoke(eval_batch_size=16), workdir, str(path), str(out))["count"] == 40
    with open(out) as f:
      table = list(csv.reader(f))
    assert table[0] == ["ID", "Labels"] and len(table) == 41
    predicted = np.array([int(r[1]) for r in table[1:]])
    assert (predicted == labels).mean() > 0.9
    assert table[1][0] == ("0" if name == "rows" else "img0")


def test_predict_reads_npy_and_npz_and_refuses_a_pickle_that_would_run_code(tmp_path):
  images, _ = sources.load_synthetic("test[:6]", {"train": 512, "test": 256})
  np.save(tmp_path / "in.npy", images)
  np.savez(tmp_path / "in.npz", data=images.transpose(0, 3, 1, 2).reshape(6, 3072),
           ids=np.array([f"img{i}" for i in range(6)]))
  for name, ids in (("in.npy", list(range(6))), ("in.npz", [f"img{i}" for i in range(6)])):
    data, read_ids = unlabeled.load(str(tmp_path / name), CIFAR10_IMAGE)
    np.testing.assert_array_equal(data, images)
    assert read_ids == ids
  np.savez(tmp_path / "nodata.npz", images=images)
  with pytest.raises(unlabeled.InputFileError, match=r"nodata.npz: expected an array named "
                                                    r"'data' .* found \['images'\]"):
    unlabeled.load(str(tmp_path / "nodata.npz"), CIFAR10_IMAGE)
  planted = tmp_path / "planted"
  with open(tmp_path / "evil.pkl", "wb") as f:
    pickle.dump({b"data": images, b"ids": _Planted(str(planted))}, f)
  with pytest.raises(pickles.UnsafePickleError,
                     match=r"evil.pkl: refused, the pickle names _?io.open"):  # _io: 3.13
    evaluate.predict(_smoke(), str(tmp_path / "no_workdir"), str(tmp_path / "evil.pkl"),
                     str(tmp_path / "out.csv"))
  assert not planted.exists() and not (tmp_path / "out.csv").exists()


def test_converted_pytorch_checkpoint_evaluates_like_pytorch(tmp_path):
  torch.manual_seed(0)
  reference = torch_reference.ShallowResNet()
  torch_reference.randomize_batchnorm(reference, torch.Generator().manual_seed(1))
  pth = tmp_path / "ModifiedResNet.pth"
  torch.save({"model_state_dict": reference.state_dict()}, pth)
  workdir = str(tmp_path / "converted")
  convert_torch.convert_checkpoint("shallow", str(pth), workdir)
  config = _smoke(model="shallow")
  metrics = evaluate.evaluate_checkpoint(config, workdir)
  images, labels = sources.load_synthetic("test", {"train": 512, "test": 256})
  with torch.no_grad():
    x = torch.from_numpy((images.astype(np.float32) / 255 - 0.5) / 0.5).permute(0, 3, 1, 2)
    expected = (reference.eval()(x).argmax(1).numpy() == labels).mean()
  assert metrics["step"] == 0 and metrics["source"] == "convert_torch"
  assert metrics["accuracy"] == pytest.approx(expected, abs=1e-9)


def test_errors_are_clear_and_leave_the_workdir_untouched(tmp_path, trained):
  workdir, _, _ = trained
  before = _snapshot(workdir)
  empty = tmp_path / "empty"
  with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint in .*empty/checkpoints "
                                                        r"\(the directory does not exist\)"):
    evaluate.evaluate_checkpoint(_smoke(), str(empty))
  assert not empty.exists()
  (empty / "checkpoints").mkdir(parents=True)  # a run that failed before its first save
  with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint in .*empty/checkpoints$"):
    evaluate.evaluate_checkpoint(_smoke(), str(empty))
  assert os.listdir(empty / "checkpoints") == []
  with pytest.raises(checkpoints.CheckpointError, match=r"holds model 'shallow', which differs "
                                                        r"from the config's model 'deep'"):
    evaluate.evaluate_checkpoint(_smoke(model="deep"), workdir)
  with pytest.raises(checkpoints.CheckpointError, match=r"differs .* in \['stage_widths'\]"):
    evaluate.evaluate_checkpoint(_smoke(**{"model.stage_widths": (8, 16, 64)}), workdir)
  with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint step 7 .* has \[16, 32, 48\]"):
    evaluate.evaluate_checkpoint(_smoke(), workdir, step=7)
  bad = tmp_path / "bad.pkl"
  with open(bad, "wb") as f:
    pickle.dump({b"data": np.zeros((5, 32, 32), np.uint8)}, f)
  with pytest.raises(unlabeled.InputFileError, match=r"bad.pkl: b'data' has shape \(5, 32, 32\)"):
    evaluate.predict(_smoke(), workdir, str(bad), str(tmp_path / "out.csv"))
  assert not (tmp_path / "out.csv").exists()
  # Training another model into the same workdir refuses instead of overwriting.
  with pytest.raises(checkpoints.CheckpointError, match=r"holds checkpoints of another model "
                                                        r"\(differs in \['stem_width'\]\); use "
                                                        r"a new --workdir"):
    train.train_and_evaluate(_smoke(**{"model.stem_width": 16}), workdir)
  # dtype "auto" was stored resolved (auto resumes in it); resuming in another dtype says how
  # to go on.
  trained_in = checkpoints.trained_dtype(workdir)
  assert trained_in == model_setup.compute_dtype(_smoke())[0]
  assert checkpoints.trained_dtype(str(tmp_path / "new")) is None  # nothing trained there
  other = {"float32": "bfloat16", "bfloat16": "float32"}[trained_in]
  with pytest.raises(checkpoints.CheckpointError, match=rf"trained computing in {trained_in}, "
                                                        rf"not {other}; resume with "
                                                        rf"--config.dtype={trained_in}"):
    train.train_and_evaluate(_smoke(dtype=other), workdir)
  assert _snapshot(workdir) == before


def test_cli_eval_and_plots(trained, tmp_path):
  workdir, _, _ = trained
  result = subprocess.run([sys.executable, "-m", "resnet_jax.main", "--config",
                           "configs/smoke.py", "--workdir", workdir, "--mode", "eval",
                           "--checkpoint_step", "32"], capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "test: accuracy" in result.stdout
  assert f"checkpoint {workdir}/checkpoints/32 (as requested)" in result.stdout
  predicted = subprocess.run([sys.executable, "-m", "resnet_jax.main", "--config",
                              "configs/smoke.py", "--workdir", workdir, "--mode", "predict",
                              "--input", write_unlabeled(tmp_path), "--output",
                              str(tmp_path / "p.csv")], capture_output=True, text=True, cwd=REPO)
  assert predicted.returncode == 0, predicted.stderr[-2000:]
  assert f"checkpoint {workdir}/checkpoints/" in predicted.stdout
  assert "(best validation accuracy, " in predicted.stdout
  assert "wrote 40 predictions" in predicted.stdout
  missing = subprocess.run([sys.executable, "-m", "resnet_jax.main", "--config",
                            "configs/smoke.py", "--workdir", str(tmp_path / "none"), "--mode",
                            "predict", "--input", "x.pkl", "--output", "y.csv"],
                           capture_output=True, text=True, cwd=REPO)
  assert missing.returncode != 0 and "error: x.pkl: no such file" in missing.stderr
  into_folder = subprocess.run([sys.executable, "-m", "resnet_jax.main", "--config",
                                "configs/smoke.py", "--workdir", workdir, "--mode", "predict",
                                "--input", write_unlabeled(tmp_path), "--output",
                                str(tmp_path)], capture_output=True, text=True, cwd=REPO)
  assert into_folder.returncode == 1 and "Traceback" not in into_folder.stderr
  assert into_folder.stderr.strip().endswith(f"error: --output {tmp_path} is a directory, not a "
                                             "file")
  os.remove(os.path.join(workdir, "curves.png"))
  plots = subprocess.run([sys.executable, "-m", "resnet_jax.plots", workdir],
                         capture_output=True, text=True, cwd=REPO)
  assert plots.returncode == 0 and os.path.getsize(os.path.join(workdir, "curves.png")) > 1000


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '[{"epoch": 1}]',
                                     "[" * 200_000 + "]" * 200_000],  # past json's depth
                         ids=["not json", "not dicts", "no metrics", "nested"])
def test_plots_of_a_damaged_history_is_one_line_and_keeps_the_old_figure(tmp_path, content):
  (tmp_path / "history.json").write_text(content)
  (tmp_path / "curves.png").write_bytes(b"old figure")
  with pytest.raises(SystemExit, match=r"error: .*history.json is not a training history"):
    plots.main(["plots", str(tmp_path)])
  assert (tmp_path / "curves.png").read_bytes() == b"old figure"


def test_plots_of_a_folder_without_a_history_is_one_line(tmp_path):
  with pytest.raises(SystemExit) as info:
    plots.main(["plots", str(tmp_path)])
  assert str(info.value.code) == (f"error: no training history at {tmp_path}/history.json: "
                                  f"is {tmp_path} a training workdir?")
  assert os.listdir(tmp_path) == []


def test_outputs_are_checked_before_compute_and_replaced_only_when_complete(
    tmp_path, trained, monkeypatch):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  images = write_unlabeled(tmp_path)
  csv_path, metrics_path = tmp_path / "p.csv", os.path.join(workdir, "eval", "metrics.json")
  evaluate.predict(_smoke(), workdir, images, str(csv_path))
  evaluate.evaluate_checkpoint(_smoke(), workdir)
  kept = {csv_path: csv_path.read_bytes(), metrics_path: open(metrics_path, "rb").read()}
  # A failure while writing (a full disk, a bad value found late) leaves the earlier file.
  def full_disk(*_, **__):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(evaluate.csv, "writer", full_disk)
  monkeypatch.setattr(evaluate.json, "dump", full_disk)
  with pytest.raises(files.OutputError, match=f"--output {re.escape(str(csv_path))} cannot be "
                                              r"written \(No space left on device\)"):
    evaluate.predict(_smoke(), workdir, images, str(csv_path))
  with pytest.raises(files.OutputError, match=r"the evaluation's output .*eval/metrics.json "
                                              r"cannot be written \(No space left"):
    evaluate.evaluate_checkpoint(_smoke(), workdir)
  # A failure drawing the figure (before metrics.json) leaves both files as they were.
  figure = open(os.path.join(workdir, "eval", "confusion_matrix.png"), "rb").read()
  monkeypatch.setattr(evaluate.plots, "plot_confusion", full_disk)
  with pytest.raises(files.OutputError, match=r"the evaluation's figure .*confusion_matrix.png "
                                              r"cannot be written"):
    evaluate.evaluate_checkpoint(_smoke(), workdir)
  for path, content in kept.items():
    assert open(path, "rb").read() == content
  assert open(os.path.join(workdir, "eval", "confusion_matrix.png"), "rb").read() == figure
  assert not [f for _, _, names in os.walk(tmp_path) for f in names if f.endswith(".part")]
  monkeypatch.undo()
  # Where nothing can be written is one error before any compute.
  monkeypatch.setattr(checkpoints, "reading_manager", full_disk)  # never reached
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  for output, message in ((str(tmp_path), "is a directory, not a file"),
                          (str(blocker / "p.csv"), r"cannot be written \(Not a directory"),
                          (str(tmp_path / ("p" * 252 + ".csv")),
                           r"cannot be written \(its name is longer")):
    with pytest.raises(files.OutputError, match=f"--output {re.escape(output)} {message}"):
      evaluate.predict(_smoke(), workdir, images, output)
  shutil.rmtree(os.path.join(workdir, "eval"))
  blocker.rename(os.path.join(workdir, "eval"))
  with pytest.raises(files.OutputError, match=r"the evaluation's output .*eval/metrics.json "
                                              r"cannot be written"):
    evaluate.evaluate_checkpoint(_smoke(), workdir)


def _preempt(config, workdir: str, step: int) -> None:
  """Trains until a SIGTERM that arrives during `step` (counted from 1) stops the run."""
  with pytest.MonkeyPatch.context() as patch:
    signal_at_batch(patch, step, signal.SIGTERM)
    with pytest.raises(preemption.Preempted):
      train.train_and_evaluate(config, workdir)


def _snapshot_checkpoints(workdir: str) -> dict:
  return _snapshot(os.path.join(workdir, "checkpoints"))


def test_every_kind_of_checkpoint_through_every_command(tmp_path, trained):
  """End-of-epoch, mid-epoch and converted checkpoints through resume, eval, predict, convert."""
  torch.manual_seed(0)
  pth = str(tmp_path / "seed.pth")
  torch.save(torch_reference.ShallowResNet().state_dict(), pth)
  kinds = {"end_of_epoch": str(tmp_path / "end_of_epoch"), "mid_epoch": str(tmp_path / "mid"),
           "converted": str(tmp_path / "converted")}
  shutil.copytree(trained[0], kinds["end_of_epoch"])
  _preempt(_smoke(), kinds["mid_epoch"], 5)  # its only checkpoint: step 5 of epoch 1
  convert_torch.convert_checkpoint("shallow", pth, kinds["converted"])
  unlabeled = write_unlabeled(tmp_path)
  for kind, workdir in kinds.items():
    config = _smoke(model="shallow") if kind == "converted" else _smoke()
    expected_step = {"end_of_epoch": None, "mid_epoch": 5, "converted": 0}[kind]
    metrics = evaluate.evaluate_checkpoint(config, workdir)
    if expected_step is not None:  # no accuracy to rank by: the latest, and said so
      assert metrics["step"] == expected_step, kind
      assert metrics["chosen"] == "the latest: no checkpoint here has a validation accuracy"
    result = evaluate.predict(config, workdir, unlabeled, str(tmp_path / f"{kind}.csv"))
    assert result["count"] == 40 and result["checkpoint"] == metrics["checkpoint"], kind
    before = _snapshot_checkpoints(workdir)
    with pytest.raises(FileExistsError, match="already exists"):
      convert_torch.convert_checkpoint("shallow", pth, workdir)
    if kind == "converted":
      with pytest.raises(checkpoints.CheckpointError,
                         match=r"holds 'convert_torch' checkpoints, not a training run's"):
        train.train_and_evaluate(config, workdir)
      assert _snapshot_checkpoints(workdir) == before
    else:
      state, history = train.train_and_evaluate(_smoke(num_epochs=4), workdir)
      assert int(state.step) == 64 and [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_cifar100_trains_evaluates_and_predicts_with_100_classes(tmp_path):
  """The model follows the dataset's 100 classes; eval shows the top confusions; predict
  writes labels 0-99 with their names; a 10-class config cannot use the workdir."""
  directory, arrays = write_cifar100_dir(str(tmp_path))
  config = _smoke(num_epochs=1, **{"data.dataset": "cifar100", "data.source": "files",
                                   "data.dir": directory, "data.eval_split": "test",
                                   "data.normalization": "cifar"})
  workdir = str(tmp_path / "run")
  state, _ = train.train_and_evaluate(config, workdir)
  assert state.params["fc"]["kernel"].shape[-1] == 100
  metrics = evaluate.evaluate_checkpoint(config, workdir)
  assert len(metrics["per_class_accuracy"]) == 100 and metrics["num_examples"] == 60
  # 60 examples leave classes out: theirs is null (no accuracy), not 0.0 (all wrong).
  present = np.array(metrics["confusion_matrix"]).sum(1) > 0
  assert [a is not None for a in metrics["per_class_accuracy"]] == present.tolist()
  assert not present.all()
  assert 0 < len(metrics["top_confusions"]) <= evaluate.TOP_CONFUSIONS
  assert sorted(os.listdir(os.path.join(workdir, "eval"))) == ["metrics.json",
                                                               "top_confusions.png"]
  np.save(tmp_path / "in.npy", arrays["test"][0])
  evaluate.predict(config, workdir, str(tmp_path / "in.npy"), str(tmp_path / "out.csv"),
                   class_names=True)
  with open(tmp_path / "out.csv") as f:
    table = list(csv.reader(f))
  names = datasets.DATASETS["cifar100"].class_names
  assert table[0] == ["ID", "Labels", "Name"] and len(table) == 61
  assert all(0 <= int(label) < 100 and name == names[int(label)] for _, label, name in table[1:])
  with pytest.raises(checkpoints.CheckpointError, match=r"in \['num_classes'\]: "
                                                        r"num_classes=100 vs 10"):
    evaluate.evaluate_checkpoint(_smoke(), workdir)
