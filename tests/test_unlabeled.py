"""Predict's input file (data/unlabeled.py): every bad value one InputFileError naming the
file, the key and the value."""

import pickle

import numpy as np
import pytest

from resnet_jax.data import unlabeled
from tests.conftest import CIFAR10_IMAGE

IMAGES = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)


def _pickle(tmp_path, obj) -> str:
  path = str(tmp_path / "input.pkl")
  with open(path, "wb") as f:
    pickle.dump(obj, f)
  return path


@pytest.mark.parametrize("ids, expected", [
    (None, [0, 1]), ([7, "b"], [7, "b"]), ([b"a", b"\xc3\xa9"], ["a", "é"]),
    (np.array([3, 4], np.uint8), [3, 4]), (np.array(["x", "y"]), ["x", "y"]),
    ((np.int64(5), np.str_("z")), [5, "z"]),
])
def test_ids_are_integers_or_strings_one_per_image(tmp_path, ids, expected):
  obj = {b"data": IMAGES.transpose(0, 3, 1, 2).reshape(2, 3072)}  # CIFAR's rows
  if ids is not None:
    obj[b"ids"] = ids
  images, read = unlabeled.load(_pickle(tmp_path, obj), CIFAR10_IMAGE)
  np.testing.assert_array_equal(images, IMAGES)
  assert read == expected and [type(i) for i in read] == [type(i) for i in expected]


@pytest.mark.parametrize("ids, message", [
    (5, r"b'ids' is 5 \(int\); expected a list or 1-D array of ids"),
    (np.array(5), r"b'ids' has shape \(\) and dtype int64; expected a 1-D array"),
    (np.zeros((2, 1), np.int64), r"b'ids' has shape \(2, 1\) and dtype int64"),
    (np.array([0.5, 1.5]), r"b'ids' has shape \(2,\) and dtype float64"),
    ([[1, 2], [3]], r"b'ids'\[0\] = \[1, 2\] \(list\); ids are integers or strings"),
    ([1.5, 2], r"b'ids'\[0\] = 1.5 \(float\); ids are integers or strings"),
    ([True, 2], r"b'ids'\[0\] = True \(bool\); ids are integers or strings"),
    ([None, 2], r"b'ids'\[0\] = None \(NoneType\)"),
    ([1, b"\xff"], r"b'ids'\[1\] = b'\\xff' is not UTF-8"),
    ([1, 2, 3], r"3 ids in b'ids' for 2 images"),
    (["a", "\ud800"], r"b'ids'\[1\] = '\\ud800' is not valid Unicode"),
    # 5,001 digits: past Python's limit on writing an int as text, which the CSV would hit.
    ([1, 10**5000], r"b'ids'\[1\] is an integer of 16610 bits; integer ids have at most 64"),
])
def test_bad_ids_are_named(tmp_path, ids, message):
  path = _pickle(tmp_path, {b"data": IMAGES, b"ids": ids})
  with pytest.raises(unlabeled.InputFileError, match=r"input.pkl: " + message):
    unlabeled.load(path, CIFAR10_IMAGE)


@pytest.mark.parametrize("obj, message", [
    ([IMAGES], r"expected a dict with b'data'"),
    ({b"data": IMAGES.astype(np.int16)}, r"b'data' has shape \(2, 32, 32, 3\) and dtype int16"),
    ({b"data": IMAGES[:, :, :16]}, r"b'data' has shape \(2, 32, 16, 3\)"),
    ({b"data": [[0] * 3072]}, r"b'data' has shape None and dtype None \(list\)"),
])
def test_bad_images_are_named(tmp_path, obj, message):
  with pytest.raises(unlabeled.InputFileError, match=r"input.pkl: " + message):
    unlabeled.load(_pickle(tmp_path, obj), CIFAR10_IMAGE)


def test_bad_npy_and_npz_files_are_named(tmp_path):
  np.save(tmp_path / "floats.npy", IMAGES.astype(np.float32))
  with pytest.raises(unlabeled.InputFileError, match=r"floats.npy: the array has shape .* "
                                                    r"dtype float32"):
    unlabeled.load(str(tmp_path / "floats.npy"), CIFAR10_IMAGE)
  np.savez(tmp_path / "objects.npz", data=IMAGES, ids=np.array([{}, {}], dtype=object))
  with pytest.raises(unlabeled.InputFileError, match=r"objects.npz: not a readable .npy or "
                                                    r".npz file \(ValueError: .*allow_pickle"):
    unlabeled.load(str(tmp_path / "objects.npz"), CIFAR10_IMAGE)
  np.savez(tmp_path / "points.npz", data=IMAGES, ids=np.frombuffer(b"a\0\0\0\0\0\x11\0", "<U1"))
  with pytest.raises(unlabeled.InputFileError, match=r"points.npz: 'ids': a str array holds a "
                                                    r"code point that is no character"):
    # numpy's own str() of it: SystemError
    unlabeled.load(str(tmp_path / "points.npz"), CIFAR10_IMAGE)
  (tmp_path / "cut.npz").write_bytes((tmp_path / "objects.npz").read_bytes()[:100])
  with pytest.raises(unlabeled.InputFileError, match=r"cut.npz: not a readable .npy or .npz"):
    unlabeled.load(str(tmp_path / "cut.npz"), CIFAR10_IMAGE)


def test_an_npz_that_decompresses_past_the_limit_is_refused_before_it_is_read(tmp_path,
                                                                                 monkeypatch):
  """A few kilobytes of compressed zeros can declare gigabytes: the zip entry's size is
  checked first (here against a limit lowered to below 40 images)."""
  monkeypatch.setattr(unlabeled, "MAX_NPZ_MEMBER_BYTES", 40 * 3072)
  np.savez_compressed(tmp_path / "zeros.npz", data=np.zeros((41, 32, 32, 3), np.uint8))
  monkeypatch.setattr(np.lib.format, "read_array", None)  # never reached
  with pytest.raises(unlabeled.InputFileError, match=r"zeros.npz: 'data.npy' holds 126,?\d* "
                                                    r"bytes uncompressed, more than 122880"):
    unlabeled.load(str(tmp_path / "zeros.npz"), CIFAR10_IMAGE)
  monkeypatch.undo()
  images = np.zeros((40, 32, 32, 3), np.uint8)
  np.savez_compressed(tmp_path / "zeros.npz", data=images)
  np.testing.assert_array_equal(unlabeled.load(str(tmp_path / "zeros.npz"), CIFAR10_IMAGE)[0],
                                images)
  with pytest.raises(unlabeled.InputFileError, match=r"missing.npy: no such file"):
    unlabeled.load(str(tmp_path / "missing.npy"), CIFAR10_IMAGE)


def test_a_pickle_that_cannot_be_read_is_named_as_such(tmp_path, monkeypatch):
  path = _pickle(tmp_path, {b"data": IMAGES})
  def refused(*_, **__):
    raise PermissionError(13, "Permission denied")
  monkeypatch.setattr(unlabeled, "open", refused, raising=False)  # root reads any mode
  with pytest.raises(unlabeled.InputFileError, match=r"input.pkl: cannot be read "
                                                    r"\(Permission denied\)"):
    unlabeled.load(path, CIFAR10_IMAGE)
