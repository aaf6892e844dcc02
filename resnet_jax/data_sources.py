"""CIFAR-10 splits as in-memory uint8 arrays, from TFDS or from the standard files.

Sources behind `config.data.source` ("synthetic", generated data for smoke runs
and tests, is the third):
  "cifar10_dir": `config.data.dir` is a `cifar-10-batches-py` directory or the
      `cifar-10-python.tar.gz` archive (the files CIFAR's site, torchvision and
      keras caches hold). Slices follow the files' order: data_batch_1..5 make
      "train", test_batch makes "test".
  "tfds": TFDS "cifar10", honouring `config.data.tfds_data_dir` and TFDS_DATA_DIR.

Both accept TFDS split strings ("train", "test", "train[:45000]", "train[45000:]",
"train[:90%]") and return (images uint8 [N, 32, 32, 3], labels int32 [N]).
CIFAR-10 is 150 MB, so a split is simply held in memory; the tf.data and the
on-device pipelines both start from these arrays.

Only the "tfds" source imports TensorFlow (lazily): GPU machines without it read
"cifar10_dir".
"""

import os
import pickle
import re
import socket
import tarfile
from typing import Callable, Iterator

import numpy as np

from resnet_jax import optional_tf

NUM_CLASSES = 10
SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
SPLIT_SIZES = {"train": 50_000, "test": 10_000}
OFFLINE_HINT = (
    "Offline, use the standard CIFAR-10 files instead: set config.data.source='cifar10_dir' "
    "and config.data.dir to a cifar-10-batches-py directory or cifar-10-python.tar.gz "
    "(in this workspace: python ../shared/data/make_cifar10_batches.py "
    "../shared/data/cifar10-train-jpeg-q75.zip data/cifar-10-batches-py).")

TFDS_DOWNLOAD_HOST = "www.cs.toronto.edu"  # where TFDS's cifar10 builder downloads from
_SPLIT_RE = re.compile(r"^(?P<name>\w+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


class DataError(ValueError):
  """Bad data or a bad split string; the message names the file or value."""


def check_split(split: str) -> re.Match:
  """Checks a split string's form and split name."""
  match = _SPLIT_RE.match(split.strip()) if isinstance(split, str) else None
  if not match:
    raise DataError(f"split {split!r} is not a split string like 'train', 'train[:45000]', "
                    "'train[45000:]' or 'train[:90%]'")
  if match["name"] not in SPLIT_FILES:
    raise DataError(f"split {split!r}: unknown split {match['name']!r}; CIFAR-10 has "
                    f"{sorted(SPLIT_FILES)}")
  return match


def parse_split(split: str, sizes: dict[str, int] = SPLIT_SIZES) -> tuple[str, int, int]:
  """A TFDS split string -> (split name, start, stop) in absolute example indices.

  The subset of TFDS's grammar that selects one contiguous slice: "name",
  "name[a:b]" with integers (negative from the end; beyond the split is an
  error) or percents, rounded to the closest example as TFDS does. tests/test_data_sources.py checks it against
  tfds.core.ReadInstruction; it lives here because GPU machines lack TFDS.
  """
  match = check_split(split)
  name = match["name"]
  n = sizes[name]

  def bound(text: str | None, default: int) -> int:
    if text is None:
      return default
    if text.endswith("%"):
      value = int(round(int(text[:-1]) * n / 100))
    else:
      value = int(text)
    if abs(value) > n:
      raise DataError(f"split {split!r} reaches example {value}, beyond the {n} in {name}")
    return value + n if value < 0 else value

  start, stop = bound(match["start"], 0), bound(match["stop"], n)
  if stop <= start:
    raise DataError(f"split {split!r} is empty ({name} has {n} examples)")
  return name, start, stop


def _read_batch(path: str, read: Callable[[], bytes]) -> tuple[np.ndarray, np.ndarray]:
  """Decodes one pickled CIFAR batch; errors name the file."""
  try:
    batch = pickle.loads(read(), encoding="bytes")
  except Exception as e:  # truncated or corrupt pickles raise many types
    raise DataError(f"{path}: not a readable CIFAR-10 batch file ({type(e).__name__}: {e})") from e
  if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
    raise DataError(f"{path}: expected a dict with b'data' and b'labels'")
  data = np.asarray(batch[b"data"])
  labels = np.asarray(batch[b"labels"])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise DataError(f"{path}: b'data' has shape {data.shape} and dtype {data.dtype}; "
                    "expected N x 3072 uint8")
  if labels.shape != (data.shape[0],):
    raise DataError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for "
                    f"{data.shape[0]} images")
  bad = (labels < 0) | (labels >= NUM_CLASSES)
  if bad.any():
    raise DataError(f"{path}: label {labels[bad][0]} out of range [0, {NUM_CLASSES}) "
                    f"at index {int(np.argmax(bad))}")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-major rows -> NHWC
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _batches_in_directory(directory: str, files: list[str]) -> Iterator[tuple[str, Callable]]:
  for name in files:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      raise DataError(f"{path}: missing CIFAR-10 batch file (expected {', '.join(files)} in "
                      f"{directory})")
    yield path, lambda path=path: open(path, "rb").read()


def _batches_in_archive(archive: str, files: list[str]) -> Iterator[tuple[str, Callable]]:
  try:
    tar = tarfile.open(archive, "r:*")
    members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DataError(f"{archive}: not a readable tar archive ({e})") from e
  with tar:
    for name in files:
      if name not in members:
        raise DataError(f"{archive}: no member {name!r} (expected cifar-10-batches-py/{name})")
      path = f"{archive}:{members[name].name}"
      yield path, lambda m=members[name]: tar.extractfile(m).read()


def load_cifar10_dir(location: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The split's examples from a cifar-10-batches-py directory or .tar.gz archive."""
  name = check_split(split)["name"]
  if not location:
    raise DataError("config.data.dir is empty; set it to a cifar-10-batches-py directory or "
                    "cifar-10-python.tar.gz")
  if os.path.isdir(location):
    batches = _batches_in_directory(location, SPLIT_FILES[name])
  elif os.path.isfile(location):
    batches = _batches_in_archive(location, SPLIT_FILES[name])
  else:
    raise DataError(f"config.data.dir={location!r} does not exist")
  images, labels = zip(*(_read_batch(path, read) for path, read in batches))
  images, labels = np.concatenate(images), np.concatenate(labels)
  _, start, stop = parse_split(split, {name: len(labels)})
  return images[start:stop], labels[start:stop]


def _reachable(host: str, timeout: float = 5.0) -> bool:
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def load_tfds(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The split from TFDS "cifar10", downloading and preparing it when needed."""
  check_split(split)  # the same validation and messages as the offline source
  optional_tf.tensorflow("config.data.source='tfds'")  # imported quietly, or a clear error
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise optional_tf.MissingTensorFlow(
        f"config.data.source='tfds' needs tensorflow-datasets ({e}); or use "
        "config.data.source='cifar10_dir'. " + OFFLINE_HINT) from e
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
  builder = tfds.builder("cifar10", data_dir=data_dir)
  where = f"TFDS cifar10 is not prepared in {builder.data_dir}"
  # Offline, TFDS's downloader retries for minutes before failing: probe first.
  if not builder.is_prepared() and not _reachable(TFDS_DOWNLOAD_HOST):
    raise DataError(f"{where} and cannot be downloaded: {TFDS_DOWNLOAD_HOST} is unreachable "
                    "(no internet?). " + OFFLINE_HINT)
  try:
    builder.download_and_prepare()
  except Exception as e:  # download failures surface as many exception types
    raise DataError(f"{where} and downloading it failed ({type(e).__name__}: {e}). "
                    + OFFLINE_HINT) from e
  # Chunks, not batch_size=-1, which needs split sizes that mock data lacks.
  chunks = list(tfds.as_numpy(builder.as_dataset(split=split).batch(10_000)))
  return (np.concatenate([c["image"] for c in chunks]).astype(np.uint8),
          np.concatenate([c["label"] for c in chunks]).astype(np.int32))


def load_synthetic(split: str, sizes: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
  """Generated, learnable CIFAR-shaped data for smoke runs and tests (no files, no network).

  Each class has its own mean colour and a bright square at a class-specific
  place, under uniform noise: a tiny model learns it within a few epochs.
  """
  name, start, stop = parse_split(split, sizes)
  rng = np.random.default_rng(list(SPLIT_FILES).index(name))
  labels = rng.integers(0, NUM_CLASSES, sizes[name]).astype(np.int32)
  colours = np.random.default_rng(10).integers(40, 216, (NUM_CLASSES, 3))
  images = colours[labels][:, None, None, :] + rng.integers(-40, 41, (sizes[name], 32, 32, 3))
  for c in range(NUM_CLASSES):
    y, x = divmod(c, 4)
    images[labels == c, 4 + 7 * y:10 + 7 * y, 4 + 7 * x:10 + 7 * x] = 255
  images = np.clip(images, 0, 255).astype(np.uint8)
  return images[start:stop], labels[start:stop]


SOURCES = ("cifar10_dir", "tfds", "synthetic")


def load_split(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 32, 32, 3], labels int32 [N]) of `split` from the configured source."""
  if data_config.source == "cifar10_dir":
    return load_cifar10_dir(data_config.dir, split)
  if data_config.source == "tfds":
    return load_tfds(split, data_config.get("tfds_data_dir"))
  if data_config.source == "synthetic":
    return load_synthetic(split, {"train": data_config.synthetic_train_size,
                                  "test": data_config.synthetic_test_size})
  raise DataError(f"config.data.source={data_config.source!r} is not one of {list(SOURCES)}")
