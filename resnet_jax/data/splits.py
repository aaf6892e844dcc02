"""Which examples a run reads: TFDS split strings, and each process's rows of a global batch.

Split strings are the subset of TFDS's grammar that selects one contiguous slice:
"train", "test", "train[:45000]", "train[45000:]", "train[:90%]". They are parsed
here rather than by TFDS so that machines without it read the same splits;
tests/test_data_sources.py checks the two agree. No TensorFlow here.
"""

import re
from typing import Mapping

from resnet_jax.data.datasets import Dataset, DataError

_SPLIT_RE = re.compile(r"^(?P<name>\w+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


def _match(split: str) -> re.Match:
  match = _SPLIT_RE.match(split.strip()) if isinstance(split, str) else None
  if not match:
    raise DataError(f"split {split!r} is not a split string like 'train', 'train[:45000]', "
                    "'train[45000:]' or 'train[:90%]'")
  return match


def check_split(split: str, dataset: Dataset) -> str:
  """The split's name, once its form and name are checked against `dataset`."""
  name = _match(split)["name"]
  if name not in dataset.split_sizes:
    raise DataError(f"split {split!r}: unknown split {name!r}; {dataset.title} has "
                    f"{sorted(dataset.split_sizes)}")
  return name


def parse_split(split: str, sizes: Mapping[str, int]) -> tuple[str, int, int]:
  """A split string -> (split name, start, stop) in absolute example indices of `sizes`.

  Integers may be negative (from the end) and may not reach beyond the split;
  percents round to the closest example, as TFDS's do.
  """
  match = _match(split)
  name = match["name"]
  if name not in sizes:
    raise DataError(f"split {split!r}: unknown split {name!r}; known: {sorted(sizes)}")
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


def process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  """This process's rows of every global batch of `batch_size`."""
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of the process "
                     f"count {process_count}")
  local = batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)
