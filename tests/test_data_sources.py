"""CIFAR-10 sources: exact contents, TFDS split strings, bad data, the shared training set."""

import lzma
import os
import pickle
import subprocess
import sys
import tarfile
import types
import zlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

from resnet_jax.data import datasets, sources, splits
from tests.conftest import SHARED_DATA, data_config, write_cifar100_dir, write_cifar_dir

DataError = datasets.DataError


@pytest.mark.parametrize("split,sl", [("train", slice(None)), ("train[:45]", slice(0, 45)),
                                      ("train[45:]", slice(45, None)),
                                      ("train[:90%]", slice(0, 90)), ("test", slice(None))])
def test_directory_returns_the_files_examples_in_order(cifar_dir, split, sl):
  directory, arrays = cifar_dir
  images, labels = sources.load_split(data_config(directory), split)
  expected_images, expected_labels = arrays[split.split("[")[0]]
  assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(images, expected_images[sl])
  np.testing.assert_array_equal(labels, expected_labels[sl])


def test_archive_reads_like_the_directory(cifar_archive):
  archive, arrays = cifar_archive
  images, labels = sources.load_split(data_config(archive), "train[10:30]")
  np.testing.assert_array_equal(images, arrays["train"][0][10:30])
  np.testing.assert_array_equal(labels, arrays["train"][1][10:30])


@pytest.mark.parametrize("spec", ["train", "test", "train[:45000]", "train[45000:]",
                                  "train[:90%]", "train[90%:]", "train[-5000:]", "train[10%:20%]",
                                  "train[3:17]", "train[:33%]", "train[67%:]"])
@pytest.mark.parametrize("n", [50_000, 50_001, 101, 7])
def test_split_strings_agree_with_tfds(spec, n):
  name = spec.split("[")[0]
  info = {name: types.SimpleNamespace(num_examples=n)}
  try:
    (absolute,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute(info)
  except ValueError:  # TFDS rejects slices beyond the split
    with pytest.raises(DataError, match=f"beyond the {n} in {name}"):
      splits.parse_split(spec, {name: n})
    return
  start, stop = absolute.from_ or 0, n if absolute.to is None else absolute.to
  if stop <= start:
    with pytest.raises(DataError, match="is empty"):
      splits.parse_split(spec, {name: n})
  else:
    assert splits.parse_split(spec, {name: n}) == (name, start, stop)


@pytest.mark.parametrize("split,message", [
    ("validation", r"unknown split 'validation'"),
    ("", r"split '' is not a split string"),
    ("train[1:2:3]", r"'train\[1:2:3\]' is not a split string"),
    ("train[100:]", r"split 'train\[100:\]' is empty \(train has 100 examples\)"),
    ("train[45000:]", r"'train\[45000:\]' reaches example 45000, beyond the 100 in train"),
    ("train[50:40]", r"is empty"),
])
def test_bad_split_strings_are_named(cifar_dir, split, message):
  with pytest.raises(DataError, match=message):
    sources.load_split(data_config(cifar_dir[0]), split)


def _rewrite(path, changes):
  with open(path, "rb") as f:
    batch = pickle.load(f, encoding="bytes")
  batch.update(changes)
  with open(path, "wb") as f:
    pickle.dump(batch, f)


def test_a_missing_or_unreadable_batch_file_is_named(cifar_dir):
  directory, _ = cifar_dir
  config = data_config(directory)
  batch3 = os.path.join(directory, "data_batch_3")

  with pytest.raises(DataError, match=r"config.data.dir='/nonexistent/cifar' does not exist"):
    sources.load_split(data_config("/nonexistent/cifar"), "train")

  with open(batch3, "rb") as f:
    original = f.read()
  with open(batch3, "wb") as f:
    f.write(original[:len(original) // 2])
  with pytest.raises(DataError, match=r"data_batch_3: not a readable CIFAR-10 batch file"):
    sources.load_split(config, "train")

  with open(batch3, "wb") as f:
    f.write(b"\x00garbage" * 10)
  with pytest.raises(DataError, match=r"data_batch_3: not a readable CIFAR-10 batch file"):
    sources.load_split(config, "train")

  os.remove(batch3)
  with pytest.raises(DataError, match=r"data_batch_3: missing CIFAR-10 batch file"):
    sources.load_split(config, "train")
  # The test split's file is untouched, so it still loads.
  assert len(sources.load_split(config, "test")[1]) == 20


@pytest.mark.parametrize("changes, message", [
    ({b"labels": [0] * 19 + [10]},
     r"b'labels'\[19\] = 10 is not a label: labels are integers in \[0, 10\)"),
    ({b"labels": [0.0] * 19 + [float("nan")]}, r"b'labels'\[19\] = nan is not a label"),
    ({b"labels": [3.7] * 20}, r"b'labels'\[0\] = 3.7 is not a label"),
    ({b"labels": np.full(20, -1, np.int64)}, r"b'labels'\[0\] = -1 is not a label"),
    ({b"labels": [2**70] * 20}, r"b'labels'\[0\] = 1180591620717411303424 is not a label"),
    ({b"labels": b"\x00" * 20}, r"b'labels' is b'\\x00.*\(bytes\); expected a list or array"),
    ({b"labels": None}, r"b'labels' is None \(NoneType\); expected a list or array"),
    ({b"labels": [0] * 19 + [None]}, r"b'labels' holds None \(NoneType\); labels are integers"),
    ({b"labels": [[0]] * 20}, r"b'labels' holds \[0\] \(list\); labels are integers"),
    ({b"labels": np.zeros((20, 1), np.int64)}, r"b'labels' has shape \(20, 1\) for 20 images"),
    ({b"labels": [0] * 19}, r"b'labels' has shape \(19,\) for 20 images"),
    ({b"data": np.zeros((20, 1024), np.uint8)}, r"b'data' has shape \(20, 1024\)"),
    ({b"data": [[0] * 3072] * 20}, r"b'data' has shape None and dtype list; expected N x 3072"),
    ({b"data": np.zeros((20, 3072), np.float32)}, r"b'data' has shape \(20, 3072\) and dtype "
                                                   r"float32; expected N x 3072 uint8"),
])
def test_every_bad_value_is_named_with_its_file_and_key(cifar_dir, changes, message):
  directory, _ = cifar_dir
  _rewrite(os.path.join(directory, "data_batch_2"), changes)
  with pytest.raises(DataError, match=r"data_batch_2: " + message):
    sources.load_split(data_config(directory), "train")


def test_an_oversized_archive_member_is_refused_before_it_is_read(cifar_archive, monkeypatch):
  archive, _ = cifar_archive
  monkeypatch.setattr(sources, "MAX_BATCH_BYTES", 1000)
  with pytest.raises(DataError, match=r"cifar-10-python.tar.gz:cifar-10-batches-py/data_batch_1:"
                                      r" \d+ bytes, more than any batch file \(1000\)"):
    sources.load_split(data_config(archive), "train")


class _Planted:
  """Pickled, it names io.open: plain pickle.load would create `path` on loading."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return open, (self.path, "w")


def test_a_batch_file_that_would_run_code_is_refused_and_nothing_runs(cifar_dir, tmp_path):
  directory, _ = cifar_dir
  planted = tmp_path / "planted"
  with open(os.path.join(directory, "data_batch_2"), "wb") as f:
    pickle.dump({b"data": np.zeros((20, 3072), np.uint8), b"labels": [0] * 20,
                 b"extra": _Planted(str(planted))}, f)
  with pytest.raises(DataError, match=r"data_batch_2: refused, the pickle names _?"
                                      r"io.open, which could run code"):
    sources.load_split(data_config(directory), "train")
  assert not planted.exists()


def test_cifar100_files_give_the_fine_labels_from_the_directory_and_the_archive(tmp_path):
  directory, arrays = write_cifar100_dir(str(tmp_path))
  archive = str(tmp_path / "cifar-100-python.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(directory, arcname="cifar-100-python")
  for location in (directory, archive):
    config = data_config(location, dataset="cifar100")
    for split, (start, stop) in (("train", (0, 60)), ("train[50:]", (50, 60)), ("test", (0, 60))):
      images, labels = sources.load_split(config, split)
      expected = arrays[split.split("[")[0]]
      np.testing.assert_array_equal(images, expected[0][start:stop])
      np.testing.assert_array_equal(labels, expected[1][start:stop])
  assert datasets.get(data_config("", dataset="cifar100")).num_classes == 100
  with pytest.raises(DataError, match=r"train: missing CIFAR-100 batch file \(expected train "
                                      r"in .*cifar-10-batches-py\)"):
    sources.load_split(data_config(write_cifar_dir(str(tmp_path / "ten"))[0],
                                   dataset="cifar100"), "train")
  _rewrite(os.path.join(directory, "test"), {b"fine_labels": [100] * 60})
  with pytest.raises(DataError, match=r"test: b'fine_labels'\[0\] = 100 is not a label: labels "
                                      r"are integers in \[0, 100\)"):
    sources.load_split(data_config(directory, dataset="cifar100"), "test")


def test_synthetic_data_serves_any_class_count():
  images, labels = sources.load_synthetic("train", {"train": 2000, "test": 10}, num_classes=100)
  assert sorted(set(labels.tolist())) == list(range(100))
  squares = {c: np.argwhere(images[labels == c][0].min(-1) == 255).min(0) for c in range(100)}
  assert len({tuple(corner) for corner in squares.values()}) == 100  # a place per class


def test_bad_archives_are_named(tmp_path, cifar_archive):
  archive, _ = cifar_archive
  with open(archive, "rb") as f:
    data = f.read()
  truncated = tmp_path / "truncated.tar.gz"
  truncated.write_bytes(data[:len(data) // 3])
  with pytest.raises(DataError, match=r"truncated.tar.gz: not a readable tar archive \(Compressed "
                                      r"file ended before the end-of-stream marker"):
    sources.load_split(data_config(str(truncated)), "train")
  # CIFAR-100's archive given for CIFAR-10 (or any archive without its files).
  cifar100 = tmp_path / "cifar-100-python.tar.gz"
  with tarfile.open(cifar100, "w:gz") as tar:
    tar.add(write_cifar100_dir(str(tmp_path / "src100"))[0], arcname="cifar-100-python")
  with pytest.raises(DataError, match=r"cifar-100-python.tar.gz: no member 'data_batch_1' "
                                      r"\(expected cifar-10-batches-py/data_batch_1\)"):
    sources.load_split(data_config(str(cifar100)), "train")
  corrupt = tmp_path / "corrupt.tar.gz"
  corrupt.write_bytes(b"not an archive")
  with pytest.raises(DataError, match=r"corrupt.tar.gz: not a readable tar archive"):
    sources.load_split(data_config(str(corrupt)), "train")
  # A damaged byte that still decompresses: only gzip's CRC-32 at the stream's end tells.
  damaged = tmp_path / "damaged.tar.gz"
  damaged.write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])
  with pytest.raises(DataError, match=r"damaged.tar.gz: not a readable tar archive \(CRC check "
                                      r"failed"):
    sources.load_split(data_config(str(damaged)), "train")


@pytest.mark.parametrize("error", [zlib.error("invalid distance too far back"),
                                   lzma.LZMAError("Corrupt input data")])
def test_a_damaged_compressed_block_is_named(cifar_archive, monkeypatch, error):
  def damaged(*_):
    raise error
  monkeypatch.setattr(tarfile.TarFile, "getmembers", damaged)
  with pytest.raises(DataError, match=f"cifar-10-python.tar.gz: not a readable tar archive "
                                      f"\\({error}\\)"):
    sources.load_split(data_config(cifar_archive[0]), "train")


def test_unknown_source_is_named(cifar_dir):
  with pytest.raises(DataError, match=r"config.data.source='kaggle' is not one of"):
    sources.load_split(data_config(cifar_dir[0], source="kaggle"), "train")


def test_tfds_offline_fails_fast_and_names_the_offline_source(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "_reachable", lambda host: False)
  config = data_config("", source="tfds", tfds_data_dir=str(tmp_path / "tfds"))
  with pytest.raises(DataError, match=r"cannot be downloaded.*source='files'"):
    sources.load_split(config, "train")


def test_tfds_download_failure_names_the_offline_source(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, "_reachable", lambda host: True)

  def fail(self, *args, **kwargs):
    raise ConnectionError("Max retries exceeded")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fail)
  config = data_config("", source="tfds", tfds_data_dir=str(tmp_path / "tfds"))
  with pytest.raises(DataError, match=r"downloading it failed \(ConnectionError.*source='files'"):
    sources.load_split(config, "train")


def _tfds_serving(labels=None, error=None):
  """A builder's as_dataset for tfds.testing.mock_data: 4 CIFAR images with `labels`, or a
  dataset that fails with `error` when read."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    if error:
      return tf.data.Dataset.range(1).map(
          lambda _: tf.debugging.assert_equal(0, 1, message=error) or {"image": 0, "label": 0})
    return tf.data.Dataset.from_tensor_slices(
        {"image": np.zeros((len(labels), 32, 32, 3), np.uint8), "label": np.array(labels)})
  return as_dataset


@pytest.mark.parametrize("serving,message", [
    # TFDS checks the range when writing a record, not when reading one.
    (_tfds_serving(labels=[0, 3, 12, 1]), r"b'label'\[2\] = 12 is not a label: labels are "
     r"integers in \[0, 10\)"),
    (_tfds_serving(labels=[0, -1, 1, 2]), r"b'label'\[1\] = -1 is not a label"),
    (_tfds_serving(error="corrupted record at 12"),
     r": reading it failed \(InvalidArgumentError: .*corrupted record at 12"),
])
def test_tfds_records_a_stranger_made_are_named(monkeypatch, serving, message):
  monkeypatch.setattr(sources, "_reachable", lambda host: True)
  with tfds.testing.mock_data(as_dataset_fn=serving):
    with pytest.raises(DataError, match=r"TFDS cifar10 'train' in .*" + message):
      sources.load_split(data_config("", source="tfds"), "train")


@pytest.fixture(scope="module")
def shared_cifar(tmp_path_factory):
  archive = os.path.join(SHARED_DATA, "cifar10-train-jpeg-q75.zip")
  if not os.path.exists(archive):
    pytest.skip(f"the workspace's shared CIFAR-10 zip is not at {archive}")
  out = str(tmp_path_factory.mktemp("shared") / "cifar-10-batches-py")
  subprocess.run([sys.executable, os.path.join(SHARED_DATA, "make_cifar10_batches.py"), archive,
                  out], check=True, capture_output=True)
  return out


def test_shared_training_data_loads_through_cifar10_dir(shared_cifar):
  config = data_config(shared_cifar)
  images, labels = sources.load_split(config, "train")
  assert images.shape == (50_000, 32, 32, 3)
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), [5_000] * 10)
  held_out = sources.load_split(config, "train[45000:]")[1]
  assert len(held_out) == 5_000
  np.testing.assert_array_equal(held_out, labels[45_000:])
