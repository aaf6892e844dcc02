"""A dataset's splits as in-memory uint8 arrays, from its own files, from TFDS, or generated.

Sources behind `config.data.source`:
  "files": `config.data.dir` is the dataset's batch-file directory
      (`cifar-10-batches-py`, `cifar-100-python`) or its archive
      (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`): the files CIFAR's site
      distributes and torchvision and keras cache. Slices follow the files' order
      (CIFAR-10's data_batch_1..5 make "train", test_batch makes "test").
      "cifar10_dir", its name before CIFAR-100, still works.
  "tfds": the dataset's TFDS builder, honouring `config.data.tfds_data_dir` and
      TFDS_DATA_DIR; downloaded and prepared on first use.
  "synthetic": generated, learnable images for smoke runs and tests.

Each returns (images uint8 [N, H, W, C], the dataset's image_shape; labels int32 [N]) of
a split string (splits.py). CIFAR is 150 MB, so a split is simply held in memory; every pipeline
starts from these arrays. Only "tfds" imports TensorFlow (lazily).
"""

import lzma
import math
import os
import socket
import tarfile
import zlib
from typing import Callable, Iterator

import numpy as np

from resnet_jax import optional_tf
from resnet_jax.data import datasets, pickles, splits
from resnet_jax.data.datasets import Dataset, DataError

SOURCES = ("files", "cifar10_dir", "tfds", "synthetic")  # cifar10_dir: files, by its old name
TFDS_DOWNLOAD_HOST = "www.cs.toronto.edu"  # where TFDS's CIFAR builders download from


def offline_hint(dataset: Dataset) -> str:
  return (f"Offline, use {dataset.title}'s own files instead: set "
          f"config.data.source='files' and config.data.dir to a {dataset.files_dir} "
          f"directory or {dataset.archive} (from {datasets.DOWNLOAD_PAGE}, or a torchvision "
          "or keras cache).")


def row_length(image_shape: tuple[int, int, int]) -> int:
  """The values in one of CIFAR's rows: an image's pixels, plane after plane."""
  return math.prod(image_shape)


def cifar_rows_to_images(rows: np.ndarray, image_shape: tuple[int, int, int]) -> np.ndarray:
  """CIFAR's rows (N x H*W*C: the red plane, then green, then blue) as NHWC images."""
  height, width, channels = image_shape
  return np.ascontiguousarray(
      rows.reshape(-1, channels, height, width).transpose(0, 2, 3, 1))


def _labels(path: str, key: bytes, value, count: int, num_classes: int) -> np.ndarray:
  """The batch's labels as int32, after checking each is an integer in [0, num_classes)."""
  if isinstance(value, (list, tuple)):  # CIFAR's own files: a list of ints
    for v in value:
      if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise DataError(f"{path}: {key!r} holds {pickles.short_repr(v)} "
                        f"({type(v).__name__}); labels are integers")
    try:
      numbers = np.array(value, np.float64)
    except OverflowError:
      raise DataError(f"{path}: {key!r} holds an integer too large for a label") from None
  elif isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
    numbers = value.astype(np.float64)
  else:
    raise DataError(f"{path}: {key!r} is {pickles.short_repr(value)} "
                    f"({type(value).__name__}); expected a list or array of integer labels")
  if numbers.shape != (count,):
    raise DataError(f"{path}: {key!r} has shape {numbers.shape} for {count} images")
  bad = ~(np.isfinite(numbers) & (numbers == np.round(numbers))
          & (numbers >= 0) & (numbers < num_classes))
  if bad.any():
    i = int(np.argmax(bad))
    label = value[i].item() if isinstance(value[i], np.generic) else value[i]
    raise DataError(f"{path}: {key!r}[{i}] = {pickles.short_repr(label)} is not a label: "
                    f"labels are integers in [0, {num_classes})")
  return numbers.astype(np.int32)


# What reading a damaged file or compressed archive raises (gzip's CRC error is an OSError).
_DAMAGED = (OSError, EOFError, tarfile.TarError, zlib.error, lzma.LZMAError)


def _read_batch(path: str, read: Callable[[], bytes],
                dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
  """Decodes one pickled batch file, checking every value; errors name the file and key."""
  try:
    raw = read()
  except _DAMAGED as e:  # a damaged file or archive member
    raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
  batch = pickles.loads(raw, path, f"{dataset.title} batch file")
  label_key = dataset.label_key
  if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
    raise DataError(f"{path}: expected a dict with b'data' and {label_key!r}")
  data, length = batch[b"data"], row_length(dataset.image_shape)
  if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
      or data.shape[1] != length:
    raise DataError(f"{path}: b'data' has shape {getattr(data, 'shape', None)} and dtype "
                    f"{getattr(data, 'dtype', type(data).__name__)}; expected N x {length} uint8")
  labels = _labels(path, label_key, batch[label_key], len(data), dataset.num_classes)
  return cifar_rows_to_images(data, dataset.image_shape), labels


# CIFAR-100's train file, the largest, is 155 MB: far larger is no batch file (and an
# archive member's declared size could otherwise fill the memory before it is read).
MAX_BATCH_BYTES = 1 << 30


def _check_size(path: str, size: int) -> None:
  if size > MAX_BATCH_BYTES:
    raise DataError(f"{path}: {size} bytes, more than any batch file ({MAX_BATCH_BYTES})")


def _files_in_directory(directory: str, files: tuple[str, ...],
                        dataset: Dataset) -> Iterator[tuple[str, Callable]]:
  for name in files:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise DataError(f"{path}: missing {dataset.title} batch file (expected "
                      f"{', '.join(files)} in {directory})")
    _check_size(path, os.path.getsize(path))
    yield path, lambda path=path: open(path, "rb").read()


def _files_in_archive(archive: str, files: tuple[str, ...],
                      dataset: Dataset) -> Iterator[tuple[str, Callable]]:
  try:
    tar = tarfile.open(archive, "r:*")
    members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
    # tarfile stops at the tar's end blocks and never reads the compressed stream's trailer,
    # whose checksum (gzip's CRC-32) is what tells a damaged archive from a whole one: a
    # flipped byte could otherwise decompress into other pixels without an error.
    while tar.fileobj.read(1 << 20):
      pass
  except _DAMAGED as e:
    raise DataError(f"{archive}: not a readable tar archive ({e})") from e
  with tar:
    for name in files:
      if name not in members:
        raise DataError(f"{archive}: no member {name!r} (expected {dataset.files_dir}/{name})")
      path = f"{archive}:{members[name].name}"
      _check_size(path, members[name].size)
      yield path, lambda m=members[name]: tar.extractfile(m).read()


def load_files(location: str, split: str, dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
  """The split's examples from the dataset's batch-file directory or .tar.gz archive."""
  name = splits.check_split(split, dataset)
  if not location:
    raise DataError(f"config.data.dir is empty; set it to a {dataset.files_dir} directory or "
                    f"{dataset.archive}")
  if os.path.isdir(location):
    batches = _files_in_directory(location, dataset.split_files[name], dataset)
  elif os.path.isfile(location):
    batches = _files_in_archive(location, dataset.split_files[name], dataset)
  else:
    raise DataError(f"config.data.dir={location!r} does not exist")
  images, labels = zip(*(_read_batch(path, read, dataset) for path, read in batches))
  images, labels = np.concatenate(images), np.concatenate(labels)
  _, start, stop = splits.parse_split(split, {name: len(labels)})
  return images[start:stop], labels[start:stop]


def _reachable(host: str, timeout: float = 5.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def load_tfds(split: str, data_dir: str | None,
              dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
  """The split from the dataset's TFDS builder, downloading and preparing it when needed."""
  splits.check_split(split, dataset)  # the same validation and messages as the files
  optional_tf.tensorflow("config.data.source='tfds'")  # imported quietly, or a clear error
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise optional_tf.MissingTensorFlow(
        f"config.data.source='tfds' needs tensorflow-datasets ({e}); or use "
        "config.data.source='files'. " + offline_hint(dataset)) from e
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
  builder = tfds.builder(dataset.tfds_name, data_dir=data_dir)
  where = f"TFDS {dataset.tfds_name} is not prepared in {builder.data_dir}"
  # Offline, TFDS's downloader retries for minutes before failing: probe first.
  if not builder.is_prepared() and not _reachable(TFDS_DOWNLOAD_HOST):
    raise DataError(f"{where} and cannot be downloaded: {TFDS_DOWNLOAD_HOST} is unreachable "
                    "(no internet?). " + offline_hint(dataset))
  try:
    builder.download_and_prepare()
  except Exception as e:  # download failures surface as many exception types
    raise DataError(f"{where} and downloading it failed ({type(e).__name__}: {e}). "
                    + offline_hint(dataset)) from e
  source = f"TFDS {dataset.tfds_name} {split!r} in {builder.data_dir}"
  try:  # chunks, not batch_size=-1, which needs split sizes that mock data lacks
    chunks = list(tfds.as_numpy(builder.as_dataset(split=split).batch(10_000)))
  except Exception as e:  # a damaged record is tf's DataLossError, a lost shard TFDS's own
    raise DataError(f"{source}: reading it failed ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:300]})") from e
  images = np.concatenate([c["image"] for c in chunks])
  if images.shape[1:] != dataset.image_shape or images.dtype != np.uint8:
    raise DataError(f"{source}: images of shape {images.shape[1:]} and dtype {images.dtype}, "
                    f"not {dataset.image_shape} uint8")
  # TFDS checks a label's range when it writes a record, not when it reads one.
  return images, _labels(source, b"label", np.concatenate([c["label"] for c in chunks]),
                         len(images), dataset.num_classes)


def load_synthetic(split: str, sizes: dict[str, int], num_classes: int = 10,
                   image_shape: tuple[int, int, int] = datasets.DATASETS["cifar10"].image_shape
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Generated, learnable data of `num_classes` classes (no files, no network).

  Each class has its own mean colour and a bright square at a class-specific
  place on a grid of at least 4 x 4 cells, under uniform noise: a tiny model
  learns it within a few epochs.
  """
  name, start, stop = splits.parse_split(split, sizes)
  rng = np.random.default_rng({"train": 0, "test": 1}[name])
  labels = rng.integers(0, num_classes, sizes[name]).astype(np.int32)
  colours = np.random.default_rng(10).integers(40, 216, (num_classes, image_shape[2]))
  images = colours[labels][:, None, None, :] + rng.integers(-40, 41, (sizes[name], *image_shape))
  columns = max(4, int(np.ceil(np.sqrt(num_classes))))
  cell = (min(image_shape[:2]) - 4) // columns  # a 4-pixel margin
  for c in range(num_classes):
    y, x = divmod(c, columns)
    images[labels == c, 4 + cell * y:3 + cell * (y + 1), 4 + cell * x:3 + cell * (x + 1)] = 255
  images = np.clip(images, 0, 255).astype(np.uint8)
  return images[start:stop], labels[start:stop]


def load_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, H, W, C] as the dataset's image_shape, labels int32 [N]) of `split`
  from the configured source."""
  dataset = datasets.get(data_config)
  if data_config.source in ("files", "cifar10_dir"):
    return load_files(data_config.dir, split, dataset)
  if data_config.source == "tfds":
    return load_tfds(split, data_config.get("tfds_data_dir"), dataset)
  if data_config.source == "synthetic":
    return load_synthetic(split, {"train": data_config.synthetic_train_size,
                                  "test": data_config.synthetic_test_size},
                          dataset.num_classes, dataset.image_shape)
  raise DataError(f"config.data.source={data_config.source!r} is not one of {list(SOURCES)}")
