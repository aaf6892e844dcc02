"""The pickle reader (data/pickles.py): what numpy and Python write reads back exactly; what
an attacker writes is refused without a crash; random and mutated files, through predict's
reader and the CIFAR loader, give the right arrays or the project's one input error.

Every attack runs in a subprocess, so that a crash fails its test instead of killing pytest.
"""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from resnet_jax.data import datasets, pickles, sources, unlabeled
from tests.conftest import CIFAR10_IMAGE, REPO

CIFAR10 = datasets.DATASETS["cifar10"]
read_batch = sources._read_batch  # pylint: disable=protected-access
RNG = np.random.default_rng(0)
ARRAYS = {
    "uint8 images": RNG.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
    "int64": np.arange(5, dtype=np.int64), "big-endian int32": np.arange(4, dtype=">i4"),
    "float32 Fortran": np.asfortranarray(RNG.random((3, 4), dtype=np.float32)),
    "bool": np.array([True, False]), "str": np.array(["ab", "c"]), "bytes": np.array([b"x"]),
    "empty": np.zeros((0, 3072), np.uint8), "0-d": np.array(7, np.uint16),
}


@pytest.mark.parametrize("protocol", range(6))
def test_what_numpy_and_python_write_reads_back_as_fresh_owned_arrays(protocol):
  obj = {b"arrays": ARRAYS, "scalars": [np.int64(-3), np.float32(0.5), np.str_("id")],
         "plain": (None, True, 2**70, 1.5, "text", b"", b"\xff" * 300, [], {})}
  read = pickles.loads(pickle.dumps(obj, protocol=protocol), "f.pkl")
  assert read["scalars"] == obj["scalars"] and read["plain"] == obj["plain"]
  assert [type(s) for s in read["scalars"]] == [type(s) for s in obj["scalars"]]
  for name, array in ARRAYS.items():
    got = read[b"arrays"][name]
    assert got.dtype == array.dtype and got.shape == array.shape, name
    np.testing.assert_array_equal(got, array)
    assert got.flags.owndata and got.flags.writeable and got.flags.c_contiguous, name


def test_cifar_s_own_python_2_layout_reads_as_bytes():
  """CIFAR's files: Python 2 strings (SHORT_BINSTRING) and numpy 1's module names."""
  data = bytes(range(6))
  stream = (b"\x80\x02}q\x00(U\x06labelsq\x01]q\x02(K\x01K\x02eU\x04dataq\x03"
            b"cnumpy.core.multiarray\n_reconstruct\nq\x04cnumpy\nndarray\nq\x05K\x00\x85U\x01b"
            b"\x87Rq\x06(K\x01K\x02K\x03\x86cnumpy\ndtype\nq\x07U\x02u1K\x00K\x01\x87Rq\x08"
            b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06" + data
            + b"tbu.")
  read = pickles.loads(stream, "data_batch_1")
  assert read[b"labels"] == [1, 2]
  np.testing.assert_array_equal(read[b"data"], np.arange(6, dtype=np.uint8).reshape(2, 3))


# Hand-assembled streams. Each names numpy's callables as numpy's own pickles do.
def _global(module: str, name: str) -> bytes:
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _text(s: str) -> bytes:
  return b"X" + struct.pack("<I", len(s.encode())) + s.encode()


def _raw(b: bytes) -> bytes:
  return b"B" + struct.pack("<I", len(b)) + b


def _dtype(typestr: str, state: bytes) -> bytes:
  return (_global("numpy", "dtype") + _text(typestr) + b"\x89\x88\x87R" + state + b"b")


PLAIN_STATE = b"(K\x03" + _text("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t"
_RECONSTRUCT = (_global("numpy.core.multiarray", "_reconstruct") + _global("numpy", "ndarray")
                + b"K\x00\x85" + _raw(b"b") + b"\x87R")


def _array_state(n: int) -> bytes:  # (1, (n,), dtype u1, False, n bytes)
  return (b"(K\x01K" + bytes([n]) + b"\x85" + _dtype("u1", PLAIN_STATE) + b"\x89"
          + _raw(b"A" * n) + b"t")


ATTACKS = {
    # An array, a view of it through _frombuffer, then the array's state reset: plain
    # pickle frees the memory under the live view (use after free).
    "use after free": (b"\x80\x02" + _RECONSTRUCT + b"q\x00" + _array_state(64) + b"b"
                       + _global("numpy.core.numeric", "_frombuffer") + b"(h\x00"
                       + _dtype("u1", PLAIN_STATE) + b"K\x40\x85" + _text("C") + b"tR"
                       + b"h\x00" + _array_state(1) + b"b" + b"\x86."),
    "a second BUILD": (b"\x80\x02" + _RECONSTRUCT + _array_state(4) + b"b"
                       + _array_state(2) + b"b."),
    "object array (pointers from the file)": (
        b"\x80\x02" + _RECONSTRUCT + b"(K\x01K\x01\x85" + _dtype("O8", PLAIN_STATE)
        + b"\x89]K\x01at" + b"b."),
    "object fields through a dtype's state (flags 0)": (
        b"\x80\x02" + _dtype("V8", b"(K\x03" + _text("|") + b"N" + b"X\x01\x00\x00\x00a\x85"
                             + b"}X\x01\x00\x00\x00a" + _dtype("O8", PLAIN_STATE)
                             + b"K\x00\x86sK\x08K\x01K\x00tb") + b"."),
    "structured fields on a plain dtype": (
        b"\x80\x02" + _dtype("u8", b"(K\x03" + _text("|") + b"NX\x01\x00\x00\x00a\x85}K\x08"
                             + b"K\x01K\x00t") + b"."),
    "BUILD on a dict": b"\x80\x02}}b.",
    "os.system": b"\x80\x02" + _global("os", "system") + _text("echo owned") + b"\x85R.",
    "builtins.eval by STACK_GLOBAL": (b"\x80\x04" + b"\x8c\x08builtins\x8c\x04eval\x93"
                                      + _text("1") + b"\x85R."),
    "NEWOBJ": b"\x80\x02" + _global("numpy", "ndarray") + b")\x81.",
    "INST": b"(ios\nsystem\n.",
    "an extension code (copyreg)": b"\x80\x02\x82\x01.",
    "a persistent id": b"\x80\x02K\x01Q.",
    "nesting a million deep": b"\x80\x02" + b"]" * 10**6 + b"a" * (10**6 - 1) + b".",
    "a list that holds itself": b"\x80\x02]q\x00h\x00a.",
    "a huge declared bytes8": b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"abc.",
    "a huge declared array": (b"\x80\x02" + _RECONSTRUCT + b"(K\x01J\xff\xff\xff\x7fJ\xff\xff"
                              b"\xff\x7f\x86" + _dtype("u1", PLAIN_STATE) + b"\x89"
                              + _raw(b"A" * 8) + b"tb."),
    "a bytes array of itemsize 0": (b"\x80\x02" + _RECONSTRUCT + b"(K\x01J\xff\xff\xff\x7f\x85"
                                    + _dtype("S0", PLAIN_STATE) + b"\x89" + _raw(b"")
                                    + b"tb."),
    "an array that was never built": b"\x80\x02" + _RECONSTRUCT + b".",
    "truncated": pickle.dumps({b"data": ARRAYS["uint8 images"]}, 2)[:-40],
    # Found by a review (2026-12-06): each crashed, leaked another error or took minutes.
    "a global's name nested a million deep (crashed hash())": (
        b"\x80\x04\x8c\x05numpy)" + b"\x85" * 10**6 + b"\x93."),
    "a str scalar past U+10FFFF (SystemError)": pickle.dumps(np.str_("a"), protocol=2).replace(
        b"a\x00\x00\x00", b"\x00\x00\x11\x00"),
    "an int dict key (hash collisions by design)": b"\x80\x02}K\x01Ns.",
    "a memo index past 2**32": b"N" + b"p%d\n" % (2**61 - 1) + b".",
    "a shape entry past sys.maxsize": (
        b"\x80\x02" + _global("numpy.core.numeric", "_frombuffer") + b"(" + _raw(b"A")
        + _dtype("u1", PLAIN_STATE) + b"\x8a\x09" + (2**70).to_bytes(9, "little") + b"\x85"
        + _text("C") + b"tR."),
    "a 10 MB name": b"c" + b"a" * 10**7 + b"\nb\n.",
}

# Runs each stream through pickles.loads, printing the case before it: a crash names it.
_RUNNER = """
import json, sys
from resnet_jax.data import pickles
cases = json.load(sys.stdin)
for name, hex_stream in cases.items():
  print(name, flush=True)
  try:
    pickles.loads(bytes.fromhex(hex_stream), "attack.pkl")
    print("READ", flush=True)
  except pickles.PickleError as e:
    print("REFUSED", type(e).__name__, e, flush=True)
"""


def test_attacks_are_refused_without_a_crash_in_a_subprocess():
  result = subprocess.run([sys.executable, "-c", _RUNNER], cwd=REPO, capture_output=True,
                          text=True, timeout=120,
                          input=json.dumps({k: v.hex() for k, v in ATTACKS.items()}))
  assert result.returncode == 0, f"crashed ({result.returncode}) after:\n{result.stdout[-500:]}"
  lines = result.stdout.splitlines()
  outcomes = dict(zip(lines[::2], lines[1::2]))
  assert list(outcomes) == list(ATTACKS)
  for name, outcome in outcomes.items():
    assert outcome.startswith("REFUSED") and "attack.pkl: " in outcome, (name, outcome)
  assert "names os.system, which could run code" in outcomes["os.system"]
  assert "array contents an array are not bytes" in outcomes["use after free"]
  assert "only a new numpy array or dtype takes a state, once" in outcomes["a second BUILD"]
  assert "dtype 'O8' is not a plain" in outcomes["object array (pointers from the file)"]
  assert "nested deeper than 32" in outcomes["nesting a million deep"]
  assert "code point that is no character" in outcomes["a str scalar past U+10FFFF (SystemError)"]
  assert max(len(outcome) for outcome in outcomes.values()) < 400


# Property-based: random and mutated files through both readers of pickles.
def _mutate(data: bytes, draw) -> bytes:
  """`data` with a few random byte flips, insertions, deletions or a cut."""
  data = bytearray(data)
  for _ in range(draw(st.integers(1, 4))):
    if not data:
      break
    at = draw(st.integers(0, len(data) - 1))
    kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
    if kind == "flip":
      data[at] = draw(st.integers(0, 255))
    elif kind == "insert":
      data[at:at] = draw(st.binary(min_size=1, max_size=8))
    elif kind == "delete":
      del data[at:at + draw(st.integers(1, 8))]
    else:
      del data[at:]
  return bytes(data)


# numpy's str arrays drop trailing NULs, as numpy means them to; lone surrogates are refused.
_ID_CHARACTERS = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])


@st.composite
def _predict_files(draw):
  """(file name, bytes, the images and ids it holds when unmutated, else None)."""
  n = draw(st.integers(0, 3))
  images = np.frombuffer(draw(st.binary(min_size=n * 3072, max_size=n * 3072)),
                         np.uint8).reshape(n, 32, 32, 3)
  ids = draw(st.one_of(st.none(), st.lists(st.integers(-2**40, 2**40), min_size=n,
                                           max_size=n),
                       st.lists(st.text(_ID_CHARACTERS, max_size=5), min_size=n, max_size=n)))
  if draw(st.booleans()):
    buffer = io.BytesIO()
    np.savez(buffer, data=images, **({} if ids is None else {"ids": np.array(ids)}))
    name, data = "input.npz", buffer.getvalue()
  else:
    obj = {b"data": images, **({} if ids is None else {b"ids": ids})}
    name, data = "input.pkl", pickle.dumps(obj, protocol=draw(st.integers(0, 5)))
  if draw(st.booleans()):
    return name, _mutate(data, draw), None
  return name, data, (images, list(range(n)) if ids is None else ids)


def _fuzz_settings(request):
  return settings(max_examples=request.config.getoption("--fuzz-examples"), deadline=None,
                  suppress_health_check=list(HealthCheck), derandomize=True)


def test_predict_s_reader_gives_the_right_arrays_or_one_input_error(request):
  @_fuzz_settings(request)
  @given(_predict_files())
  def check(case):
    name, data, expected = case
    with tempfile.TemporaryDirectory() as directory:
      path = os.path.join(directory, name)
      with open(path, "wb") as f:
        f.write(data)
      try:
        images, ids = unlabeled.load(path, CIFAR10_IMAGE)
      except datasets.DataError as e:  # InputFileError, PickleError: the one input error
        assert expected is None and str(e).startswith(path), e
        return
      if expected is not None:
        np.testing.assert_array_equal(images, expected[0])
        assert ids == expected[1]
      assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
      assert len(ids) == len(images) and all(type(i) in (int, str) for i in ids)
  check()


@st.composite
def _batch_files(draw):
  n = draw(st.integers(0, 3))
  data = np.frombuffer(draw(st.binary(min_size=n * 3072, max_size=n * 3072)), np.uint8)
  labels = draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
  stream = pickle.dumps({b"batch_label": b"x", b"labels": labels,
                         b"data": data.reshape(n, 3072)}, protocol=draw(st.integers(0, 5)))
  if draw(st.booleans()):
    return _mutate(stream, draw), None
  return stream, (data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1), labels)


def test_the_cifar_loader_gives_the_right_arrays_or_one_data_error(request):
  @_fuzz_settings(request)
  @given(st.one_of(_batch_files(), st.binary(max_size=200).map(lambda b: (b, None))))
  def check(case):
    stream, expected = case
    try:
      images, labels = read_batch("data_batch_1", lambda: stream, CIFAR10)
    except datasets.DataError as e:
      assert expected is None and str(e).startswith("data_batch_1: "), e
      return
    if expected is not None:
      np.testing.assert_array_equal(images, expected[0])
      assert labels.tolist() == expected[1]
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    assert ((labels >= 0) & (labels < 10)).all() and len(labels) == len(images)
  check()
