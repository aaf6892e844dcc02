"""Predict's input: unlabeled images and their ids from a file a stranger may have made.

Three formats: a pickled dict with b"data" (N x H x W x C as the dataset's images,
or CIFAR's N x H*W*C channel-major rows, uint8) and optional b"ids", read by pickles.loads (no code
runs, every array a fresh copy); an .npz with "data" and optional "ids"; an .npy
of the images (both through numpy without pickles). Every value is checked:
images uint8 of those shapes, ids a list or 1-D array of integers or strings, one
per image. Any problem is an InputFileError naming the file, the key and the value.
"""

import os

import numpy as np

from resnet_jax.data import pickles, sources
from resnet_jax.data.datasets import DataError

_ID_KINDS = "iuUS"  # integer and text arrays

# An .npz member's size once decompressed, which its zip entry declares: a few kilobytes of
# zeros can declare gigabytes. 1 GiB holds 350,000 CIFAR images; an .npy (read as it is on
# disk) has no such limit.
MAX_NPZ_MEMBER_BYTES = 1 << 30


class InputFileError(DataError):
  """An unusable predict input file; the message names it."""


def _arrays(path: str) -> tuple[object, object, str, str]:
  """(data, ids or None, the data's key, the ids' key) as the file holds them."""
  if path.endswith(".npy"):
    return np.load(path, allow_pickle=False), None, "the array", ""
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as arrays:
      if "data" not in arrays.files:
        raise InputFileError(f"{path}: expected an array named 'data' (and optional 'ids'); "
                             f"found {sorted(arrays.files)}")
      for member in arrays.zip.infolist():
        if member.filename in ("data", "data.npy", "ids", "ids.npy") \
            and member.file_size > MAX_NPZ_MEMBER_BYTES:
          raise InputFileError(f"{path}: {member.filename!r} holds {member.file_size} bytes "
                               f"uncompressed, more than {MAX_NPZ_MEMBER_BYTES}; save the "
                               "images as an .npy file instead")
      return arrays["data"], arrays["ids"] if "ids" in arrays.files else None, "'data'", "'ids'"
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:  # not a .npy or .npz: the broad message below would misname it
    raise InputFileError(f"{path}: cannot be read ({e.strerror or e})") from None
  obj = pickles.loads(raw, path, "pickle, .npy or .npz")
  if not isinstance(obj, dict) or b"data" not in obj:
    raise InputFileError(f"{path}: expected a dict with b'data' (and optional b'ids')")
  return obj[b"data"], obj.get(b"ids"), "b'data'", "b'ids'"


def _images(path: str, data, key: str, image_shape: tuple[int, int, int]) -> np.ndarray:
  shape, dtype = getattr(data, "shape", None), getattr(data, "dtype", None)
  length = sources.row_length(image_shape)
  if not isinstance(data, np.ndarray) or dtype != np.uint8 or not (
      data.ndim == 4 and shape[1:] == image_shape or data.ndim == 2 and shape[1] == length):
    raise InputFileError(f"{path}: {key} has shape {shape} and dtype {dtype} "
                         f"({type(data).__name__}); expected N x "
                         f"{' x '.join(map(str, image_shape))} or N x {length} uint8")
  if data.ndim == 2:
    return sources.cifar_rows_to_images(data, image_shape)
  return np.ascontiguousarray(data)


def _id(path: str, key: str, index: int, value) -> int | str:
  """One id as a CSV cell: an integer or a string (bytes as UTF-8)."""
  if isinstance(value, np.generic) and value.dtype.kind in _ID_KINDS:
    value = value.item()
  if isinstance(value, bytes):
    try:
      value = value.decode()
    except UnicodeDecodeError:
      raise InputFileError(f"{path}: {key}[{index}] = {value[:40]!r} is not UTF-8") from None
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise InputFileError(f"{path}: {key}[{index}] = {pickles.short_repr(value)} "
                         f"({type(value).__name__}); ids are integers or strings")
  if isinstance(value, int) and value.bit_length() > 64:  # its decimals could exceed
    # Python's 4,300-digit limit on int-to-str, failing the CSV after the model ran
    raise InputFileError(f"{path}: {key}[{index}] is an integer of {value.bit_length()} bits; "
                         "integer ids have at most 64")
  if isinstance(value, str):
    try:
      value.encode()  # the CSV is UTF-8: a lone surrogate would fail there, after the model ran
    except UnicodeEncodeError:
      raise InputFileError(f"{path}: {key}[{index}] = {pickles.short_repr(value)} is not "
                           "valid Unicode") from None
  return value


def _ids(path: str, ids, key: str, count: int) -> list:
  if ids is None:
    return list(range(count))
  if isinstance(ids, np.ndarray):
    if ids.ndim != 1 or ids.size and ids.dtype.kind not in _ID_KINDS:  # np.array([]): float
      raise InputFileError(f"{path}: {key} has shape {ids.shape} and dtype {ids.dtype}; "
                           "expected a 1-D array of integers or strings")
    try:
      pickles.check_code_points(ids)  # an .npz's str array is read as it is
    except ValueError as e:
      raise InputFileError(f"{path}: {key}: {e}") from None
  elif not isinstance(ids, (list, tuple)):
    raise InputFileError(f"{path}: {key} is {pickles.short_repr(ids)} "
                         f"({type(ids).__name__}); expected a list or 1-D array of ids")
  if len(ids) != count:
    raise InputFileError(f"{path}: {len(ids)} ids in {key} for {count} images")
  return [_id(path, key, i, value) for i, value in enumerate(ids)]


def load(path: str, image_shape: tuple[int, int, int]) -> tuple[np.ndarray, list]:
  """(images uint8 [N, *image_shape], ids: N integers or strings) from predict's input file,
  `image_shape` the dataset's (datasets.Dataset.image_shape)."""
  if not os.path.isfile(path):
    raise InputFileError(f"{path}: no such file")
  try:
    data, ids, data_key, ids_key = _arrays(path)
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # numpy's and zipfile's readers of a damaged .npy or .npz raise many types: OSError,
    # ValueError, EOFError, BadZipFile, MemoryError, NotImplementedError (an unknown
    # compression), RuntimeError (an encrypted member), tokenize.TokenError (a damaged
    # header), and others like them.
    raise InputFileError(f"{path}: not a readable .npy or .npz file "
                         f"({type(e).__name__}: {pickles.short_repr(str(e))})") from None
  images = _images(path, data, data_key, image_shape)
  return images, _ids(path, ids, ids_key, len(images))
