"""Pickles from strangers, read without running their code.

CIFAR's batch files and predict's input are pickles, and a plain `pickle.load`
calls whatever callable a file names: a crafted file runs code when it is read.
`load` builds only what those files hold (dicts, lists, tuples, strings, bytes,
numbers, None and numpy arrays); a file that names any other callable is refused
with an error naming the file and the callable, before anything is called. No
TensorFlow and no JAX here.
"""

import io
import pickle

from resnet_jax.data.datasets import DataError

# The only callables the pickles of numpy arrays and scalars name, in numpy 1 and 2
# (protocol 5 rebuilds arrays with _frombuffer); `_reconstruct` builds an array of
# the class it is given, and that class must come through here too.
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core")
      for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol 2: encode(text, "latin1")
}


class UnsafePickleError(DataError):
  """A pickle that names a callable outside plain data and numpy arrays."""


class _Unpickler(pickle.Unpickler):

  def __init__(self, file, path: str):
    super().__init__(file, encoding="bytes")
    self._path = path

  def find_class(self, module: str, name: str):
    if (module, name) not in _ALLOWED:
      raise UnsafePickleError(
          f"{self._path}: refused, the pickle names {module}.{name}, which could run code; "
          "only plain containers, strings, numbers and numpy arrays are read")
    return super().find_class(module, name)


def loads(data: bytes, path: str):
  """The object pickled in `data` (read from `path`, which errors name), built safely.

  Python 2 strings come back as bytes, as CIFAR's own files need.
  """
  return _Unpickler(io.BytesIO(data), path).load()
