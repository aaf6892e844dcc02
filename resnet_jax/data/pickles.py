"""Pickles from strangers, read without running their code or trusting their bytes.

CIFAR's batch files and predict's input are pickles. `pickle.load` calls whatever
a file names, and even numpy's own callables are unsafe there: pickle's BUILD
opcode calls `ndarray.__setstate__`, which can free the memory under a live view
(`_frombuffer`) or give a dtype the flags that turn file bytes into object
pointers. So nothing here unpickles: `loads` walks the opcodes
(`pickletools.genops` parses them, executing nothing) on a small stack machine
that knows only what those files use:

- plain values (None, bools, ints, floats, str, bytes), tuples, lists and dicts
  it builds itself, filled only by APPEND(S) and SETITEM(S) on those;
- numpy arrays and scalars, whose pickles name `_reconstruct`, `_frombuffer`,
  `scalar` and `dtype`: these names stand for placeholders, never for numpy's
  callables; each array is made, once, by copying the file's bytes into a
  fresh, owned array of an allowed dtype (bool, integer, float, fixed-width str
  or bytes: never object, void, structured or datetime), its byte count checked
  against its shape first;
- Python 3's bytes at protocols 0-2 (`_codecs.encode(text, "latin1")`, `bytes()`).

Anything else (another opcode or callable, BUILD on anything but a pending
placeholder, a second BUILD, a cycle, nesting deeper than MAX_DEPTH) is refused
with a PickleError naming the file. No TensorFlow and no JAX here.
"""

import io
import math
import pickletools
import re
import sys
import reprlib
import warnings

import numpy as np

from resnet_jax.data.datasets import DataError

MAX_DEPTH = 32  # CIFAR's files and predict's inputs nest 3 deep; cycles end here too
_DTYPE = re.compile(r"(b1|[iu][1248]|f[248]|[US][0-9]{1,9})")  # numpy's pickled type strings
_MAX_NAME = 200  # characters of a module or callable name: numpy's are under 40


class PickleError(DataError):
  """A pickle this reader refuses or cannot read; the message names the file."""


class UnsafePickleError(PickleError):
  """A pickle that names a callable outside plain data and numpy arrays."""


class _Name:
  """A callable a pickle names, as a token: the machine never calls what a file names."""

  def __init__(self, name: str):
    self.name = name

  def __repr__(self) -> str:
    return self.name


# What numpy 1 and 2 and Python 3's protocol-2 bytes name, by (module, name).
_NAMES = {
    ("numpy", "ndarray"): _Name("ndarray"), ("numpy", "dtype"): _Name("dtype"),
    ("_codecs", "encode"): _Name("encode"),
    **{(module, "bytes"): _Name("bytes") for module in ("__builtin__", "builtins")},  # b""
    **{(f"numpy.{core}.multiarray", name): _Name(name) for core in ("core", "_core")
       for name in ("_reconstruct", "scalar")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _Name("_frombuffer")
       for core in ("core", "_core")},
}


def _text(value):
  """Python 2's strings reach the machine as bytes (CIFAR's files name their dtypes so)."""
  return value.decode("latin-1") if isinstance(value, bytes) and len(value) < 16 else value


class _PendingDtype:
  """`dtype(typestr, ...)`, until BUILD gives its byte order."""

  def __init__(self, typestr):
    typestr = _text(typestr)
    if not isinstance(typestr, str) or not _DTYPE.fullmatch(typestr):
      raise ValueError(f"dtype {typestr!r} is not a plain bool, number, str or bytes dtype")
    self.dtype = np.dtype(typestr)
    self.built = False

  def __repr__(self) -> str:
    return f"dtype {self.dtype}"

  def build(self, state) -> None:
    if (not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4)
        or state[8:] not in ((), (None,))):  # version 4 adds metadata
      raise ValueError(f"dtype state {short_repr(state)} is not numpy's")
    _, order, subarray, names, fields, elsize = state[:6]
    order = _text(order)
    if subarray is not None or names is not None or fields is not None:
      raise ValueError("structured or sub-array dtypes are refused")
    if order not in ("<", ">", "|", "=") or elsize not in (-1, self.dtype.itemsize):
      raise ValueError(f"dtype state {short_repr(state)} does not fit {self.dtype}")
    if order in "<>":
      self.dtype = self.dtype.newbyteorder(order)
    self.built = True


class _PendingArray:
  """`_reconstruct(ndarray, ...)`, until BUILD gives its shape, dtype and bytes."""

  def __init__(self):
    self.array = None

  @property
  def built(self) -> bool:
    return self.array is not None

  def __repr__(self) -> str:
    return "an array"

  def build(self, state) -> None:
    if isinstance(state, tuple) and len(state) == 5:
      state = state[1:] if state[0] == 1 else None  # versioned, as numpy writes it
    if not isinstance(state, tuple) or len(state) != 4:
      raise ValueError(f"array state {short_repr(state)} is not numpy's")
    shape, dtype, fortran, data = state
    self.array = _array(data, dtype, shape, "F" if fortran else "C")


def _dtype(value) -> np.dtype:
  if not isinstance(value, _PendingDtype) or not value.built:
    raise ValueError(f"expected a dtype, found {short_repr(value)}")
  return value.dtype


def _array(data, dtype, shape, order) -> np.ndarray:
  """A fresh array holding a copy of `data`, checked against `shape` before anything is made."""
  dtype = _dtype(dtype)
  if not isinstance(data, bytes):
    raise ValueError(f"array contents {short_repr(data)} are not bytes")
  sizes = isinstance(shape, tuple) and len(shape) <= MAX_DEPTH and all(
      type(n) is int and 0 <= n <= sys.maxsize for n in shape)  # pylint: disable=unidiomatic-typecheck
  if not sizes:
    raise ValueError(f"array shape {short_repr(shape)} is not a tuple of sizes")
  if order not in ("C", "F") or dtype.itemsize == 0:
    raise ValueError(f"array order {order!r} or dtype {dtype} is not readable")
  if math.prod(shape) * dtype.itemsize != len(data):
    raise ValueError(f"array of shape {shape} and dtype {dtype} in {len(data)} bytes")
  return _check_text(np.frombuffer(data, dtype).reshape(shape, order=order).copy(order="C"))


def _scalar(dtype, data) -> np.generic:
  dtype = _dtype(dtype)
  if not isinstance(data, bytes) or len(data) != dtype.itemsize:
    raise ValueError(f"a {dtype} scalar in {short_repr(data)}")
  return _check_text(np.frombuffer(data, dtype))[0].copy()


def _check_text(array: np.ndarray) -> np.ndarray:
  """`array`, unless its str dtype holds a code point no str can (numpy raises SystemError)."""
  check_code_points(array)
  return array


def check_code_points(array: np.ndarray) -> None:
  """Raises ValueError where a str ("U") array holds a surrogate or a value past U+10FFFF."""
  if array.dtype.kind == "U":
    points = array.view(array.dtype.byteorder.replace("|", "=") + "u4")
    if ((points > 0x10FFFF) | ((points >= 0xD800) & (points <= 0xDFFF))).any():
      raise ValueError("a str array holds a code point that is no character")


def _encode(text, encoding) -> bytes:
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise ValueError(f"encode({short_repr(text)}, {short_repr(encoding)})")
  return text.encode("latin-1")


def _reduce(function: _Name, args: tuple):
  """What calling `function` would make: a value or a placeholder; numpy is never called."""
  if function.name == "encode" and len(args) == 2:
    return _encode(*args)
  if function.name == "bytes" and not args:
    return b""
  if function.name == "dtype" and len(args) == 3:
    return _PendingDtype(args[0])
  if function.name == "_reconstruct" and len(args) == 3 and args[0] is _NAMES["numpy", "ndarray"]:
    return _PendingArray()
  if function.name == "scalar" and len(args) == 2:
    return _scalar(*args)
  if function.name == "_frombuffer" and len(args) == 4:
    data, dtype, shape, order = args
    return _array(data, dtype, shape, order)
  raise ValueError(f"{function.name}{short_repr(args)} is not how numpy pickles arrays")


_REPR = reprlib.Repr()  # Python 3.11's takes no arguments
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40


def short_repr(value) -> str:
  return _REPR.repr(value)


_KEY_TYPES = (str, bytes)  # ints and floats could collide in hash by design: quadratic dicts
_MAX_MEMO = 2**32  # LONG_BINPUT's largest; protocol 0's PUT could name any integer
_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_EMPTY = {"EMPTY_DICT": dict, "EMPTY_LIST": list, "EMPTY_TUPLE": tuple}
_LITERALS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
             "BINFLOAT", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
             "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}
_PY2_STRINGS = {"STRING", "BINSTRING", "SHORT_BINSTRING"}  # read as bytes, as CIFAR's need
_TUPLES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


class _Machine:
  """The stack machine: a method per kind of opcode (`_OPCODES`), errors as ValueError."""

  def __init__(self):
    self.stack, self.marks, self.memo = [], [], {}

  def run(self, stream: io.BytesIO):
    for opcode, arg, _ in pickletools.genops(stream):
      if opcode.name == "STOP":
        if len(self.stack) != 1 or self.marks:
          raise ValueError("the stream stops with a malformed stack")
        return _resolve(self.stack[0], 0, {})
      if opcode.name not in _OPCODES:
        raise ValueError(f"opcode {opcode.name} is not used by data pickles")
      _OPCODES[opcode.name](self, opcode.name, arg)
    raise ValueError("no STOP")  # unreachable: genops raises first at the end of the data

  def push(self, value) -> None:
    self.stack.append(value)

  def peek(self):
    if len(self.stack) <= (self.marks[-1] if self.marks else 0):
      raise ValueError("stack underflow")
    return self.stack[-1]

  def pop(self, n: int) -> list:
    if len(self.stack) - n < (self.marks[-1] if self.marks else 0):
      raise ValueError("stack underflow")
    items = self.stack[len(self.stack) - n:]
    del self.stack[len(self.stack) - n:]
    return items

  def pop_mark(self) -> list:
    if not self.marks:
      raise ValueError("no MARK")
    start = self.marks.pop()
    items = self.stack[start:]
    del self.stack[start:]
    return items

  def target(self, kind: type):
    """The container on the stack that items go into: one the machine made, of `kind`."""
    container = self.peek()
    if type(container) is not kind:  # pylint: disable=unidiomatic-typecheck
      raise ValueError(f"items added to a {type(container).__name__}, not a {kind.__name__}")
    return container

  def proto(self, _, version) -> None:
    if not 0 <= version <= 5:
      raise ValueError(f"protocol {version}")

  def constant(self, name, _) -> None:
    self.push(_CONSTANTS[name])

  def empty(self, name, _) -> None:
    self.push(_EMPTY[name]())

  def literal(self, _, value) -> None:
    self.push(value)

  def py2_string(self, _, text) -> None:
    self.push(text.encode("latin-1"))  # genops decodes them as latin-1

  def bytearray8(self, _, data) -> None:
    self.push(bytes(data))

  def mark(self, *_) -> None:
    self.marks.append(len(self.stack))

  def collection(self, name, _) -> None:
    items = self.pop_mark()
    self.push({"TUPLE": tuple, "LIST": list}[name](items) if name != "DICT"
              else _set_items({}, items))

  def small_tuple(self, name, _) -> None:
    self.push(tuple(self.pop(_TUPLES[name])))

  def append(self, name, _) -> None:
    items = self.pop(1) if name == "APPEND" else self.pop_mark()
    self.target(list).extend(items)

  def setitem(self, name, _) -> None:
    items = self.pop(2) if name == "SETITEM" else self.pop_mark()
    _set_items(self.target(dict), items)

  def put(self, name, index) -> None:
    if name != "MEMOIZE" and not 0 <= index < _MAX_MEMO:
      raise ValueError(f"memo index {short_repr(index)}")
    self.memo[len(self.memo) if name == "MEMOIZE" else index] = self.peek()

  def get(self, _, index) -> None:
    if index not in self.memo:
      raise ValueError(f"memo entry {index} read before it was written")
    self.push(self.memo[index])

  def global_name(self, name, arg) -> None:
    module, qualname = arg.split(" ", 1) if name == "GLOBAL" else self.pop(2)
    # Checked before the lookup hashes them: a tuple nested a million deep crashes hash().
    if not (type(module) is str and type(qualname) is str  # pylint: disable=unidiomatic-typecheck
            and len(module) + len(qualname) <= _MAX_NAME):
      raise ValueError(f"a global name of {short_repr(module)} and {short_repr(qualname)}")
    if (module, qualname) not in _NAMES:
      raise _Refused(f"{module}.{qualname}")
    self.push(_NAMES[module, qualname])

  def reduce(self, *_) -> None:
    function, args = self.pop(2)
    if not isinstance(function, _Name) or not isinstance(args, tuple):
      raise ValueError(f"REDUCE of {short_repr(function)}")
    self.push(_reduce(function, args))

  def build(self, *_) -> None:
    (state,) = self.pop(1)
    pending = self.peek()
    if not isinstance(pending, (_PendingArray, _PendingDtype)) or pending.built:
      raise ValueError(f"BUILD of {short_repr(pending)}: only a new numpy array or dtype takes "
                       "a state, once")
    pending.build(state)


_OPCODES = {
    "PROTO": _Machine.proto, "FRAME": lambda *_: None,
    **dict.fromkeys(_CONSTANTS, _Machine.constant), **dict.fromkeys(_EMPTY, _Machine.empty),
    **dict.fromkeys(_LITERALS, _Machine.literal),
    **dict.fromkeys(_PY2_STRINGS, _Machine.py2_string), "BYTEARRAY8": _Machine.bytearray8,
    "MARK": _Machine.mark, **dict.fromkeys(("TUPLE", "LIST", "DICT"), _Machine.collection),
    **dict.fromkeys(_TUPLES, _Machine.small_tuple),
    **dict.fromkeys(("APPEND", "APPENDS"), _Machine.append),
    **dict.fromkeys(("SETITEM", "SETITEMS"), _Machine.setitem),
    **dict.fromkeys(("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"), _Machine.put),
    **dict.fromkeys(("GET", "BINGET", "LONG_BINGET"), _Machine.get),
    **dict.fromkeys(("GLOBAL", "STACK_GLOBAL"), _Machine.global_name),
    "REDUCE": _Machine.reduce, "BUILD": _Machine.build,
}


def _set_items(target: dict, items: list) -> dict:
  if len(items) % 2:
    raise ValueError("a dict's items come in pairs")
  for key, value in zip(items[::2], items[1::2]):
    if not isinstance(key, _KEY_TYPES):
      raise ValueError(f"dict key {short_repr(key)}")
    target[key] = value
  return target


def _resolve(value, depth: int, done: dict):
  """`value` with every placeholder replaced by what it made; shared parts resolved once."""
  if depth > MAX_DEPTH:
    raise ValueError(f"nested deeper than {MAX_DEPTH} levels (or a container holds itself)")
  if id(value) in done:
    return done[id(value)]
  if isinstance(value, _PendingArray):
    if not value.built:
      raise ValueError("an array without its contents (no BUILD)")
    result = value.array
  elif isinstance(value, _PendingDtype):
    result = _dtype(value)
  elif isinstance(value, _Name):
    raise ValueError(f"a bare {value.name} where data belongs")
  elif isinstance(value, (list, tuple)):
    result = type(value)(_resolve(v, depth + 1, done) for v in value)
  elif isinstance(value, dict):
    result = {k: _resolve(v, depth + 1, done) for k, v in value.items()}
  else:
    return value
  done[id(value)] = result
  return result


class _Refused(Exception):
  """A callable outside `_NAMES`: the one failure that is not merely malformed data."""


def loads(data: bytes, path: str, what: str = "pickle"):
  """The object pickled in `data` (read from `path`, a `what`, which errors name), as fresh
  values.

  Python 2 strings come back as bytes, as CIFAR's own files need. Raises PickleError
  (UnsafePickleError for a callable outside plain data and numpy arrays), nothing else.
  """
  try:
    with warnings.catch_warnings():  # a file's invalid escapes in protocol-0 strings
      warnings.simplefilter("ignore", DeprecationWarning)
      return _Machine().run(io.BytesIO(data))
  except _Refused as e:
    raise UnsafePickleError(
        f"{path}: refused, the pickle names {e}, which could run code; only plain "
        "containers, strings, numbers and numpy arrays are read") from None
  except (ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError,
          UnicodeError, RecursionError) as e:
    raise PickleError(f"{path}: not a readable {what} ({_short_error(e)})") from None


def _short_error(error: Exception) -> str:
  text = str(error)
  return text if len(text) <= 200 else text[:197] + "..."
