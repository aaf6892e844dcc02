"""A dataset's own archive from CIFAR's site, checked against its published MD5.

    python -m resnet_jax.data.download --dataset cifar10 --dir DIR [--url URL --md5 MD5]

prints the archive's path, which `config.data.source='files'` reads as
`config.data.dir` (no unpacking needed). The data without TensorFlow or TFDS:
a Colab TPU runtime has no TensorFlow (scripts/colab_tpu.ipynb). --url and --md5
name a mirror and its checksum instead of CIFAR's own.

What it guarantees, whatever DIR already holds or the arguments say:

- An archive already in DIR with the right MD5 is used as it is; one with another
  is an error and is left alone.
- A download is written only to a partial file that this run creates itself under a
  fresh name (DIR/.ARCHIVE.<random>.part, by files.replaced_atomically: opened with
  O_CREAT|O_EXCL|O_NOFOLLOW): no path that already exists, a planted `.part` file or
  link included, is ever opened for writing, and none is removed. On any failure the
  run removes its own partial file and nothing else.
- The partial file takes the archive's name (os.replace) only after its MD5 matches,
  so an interrupted or corrupt download never passes for the archive.
- MD5s compare case-insensitively; --md5 must be 32 hex digits.
- A bad argument (--dir a file or unwritable, the archive's path a folder, a --url
  that is no http, https, ftp or file URL, a malformed --md5) is one line
  `error: ...` naming the argument and its value, exit status 1, no traceback.
"""

import argparse
import hashlib
import http.client
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

from resnet_jax import files
from resnet_jax.data import datasets
from resnet_jax.data.datasets import Dataset, DataError

CHUNK = 1 << 20
URL_SCHEMES = ("http", "https", "ftp", "file")


def md5_of(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _checked_md5(md5: str | None) -> str | None:
  """--md5 in lower case, as hexdigest() writes it; an error unless it is 32 hex digits."""
  if md5 is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
    raise DataError(f"--md5 {md5!r}: not an MD5 (32 hex digits)")
  return md5 and md5.lower()


def _checked_url(url: str) -> str:
  """`url`, or an error naming it: caught here, urllib's ValueErrors and "no host given"
  would otherwise read as a failed download (or a traceback)."""
  try:
    parts = urllib.parse.urlsplit(url)
  except ValueError:  # e.g. an unclosed "[" in the host
    parts = None
  place = parts and (parts.path if parts.scheme == "file" else parts.netloc)
  printable = url.isprintable() and " " not in url  # http.client refuses the rest
  if not parts or parts.scheme not in URL_SCHEMES or not place or not printable:
    raise DataError(f"--url {url!r}: not a URL to download from ({', '.join(URL_SCHEMES)})")
  return url


def _check_places(directory: str, path: str) -> None:
  """Errors for a --dir that is no folder and an archive's path that is no file (a folder,
  a FIFO, which md5_of would wait on forever)."""
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise DataError(f"--dir {directory!r}: not a folder")
  if os.path.exists(path) and not os.path.isfile(path):
    raise DataError(f"--dir {directory!r}: {path!r} is not a file (a folder?); move it away "
                    "to download the archive there")


def _checked_archive(dataset: Dataset, path: str, md5: str, progress) -> str:
  """`path`, an archive already there, once its MD5 is `md5`."""
  try:
    found = md5_of(path)
  except OSError as e:
    raise DataError(f"{path}: cannot read it ({e.strerror or e})") from e
  if found != md5:
    raise DataError(f"{path}: MD5 {found}, not {md5} (that of {dataset.title}'s "
                    f"{dataset.archive}); move it away to download the archive again")
  progress(f"{path}: already here, MD5 {md5} checked")
  return path


def _chunks(url: str, progress):
  """`url`'s bytes, a chunk at a time, reporting every tenth of them; DataError naming the
  URL when the download fails (a write error of the consumer's is not caught here)."""
  try:
    with urllib.request.urlopen(url, timeout=60) as response:
      total, done, reported = int(response.headers.get("Content-Length") or 0), 0, 0
      for chunk in iter(lambda: response.read(CHUNK), b""):
        yield chunk
        done += len(chunk)
        if total and done * 10 // total > reported:
          reported = done * 10 // total
          progress(f"{url}: {done / 2**20:.1f} of {total / 2**20:.1f} MiB")
  except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:
    raise DataError(f"downloading {url} failed ({e}); download it yourself from "
                    f"{datasets.DOWNLOAD_PAGE} into the folder, or copy a torchvision or "
                    "keras cache of it there") from e


def _download(url: str, out, progress) -> str:
  """Writes `url` to the open file `out`; returns the MD5 of what came. A failed write (a
  full disk) raises its OSError, which fetch names as the folder's."""
  digest = hashlib.md5()
  for chunk in _chunks(url, progress):
    out.write(chunk)
    digest.update(chunk)
  return digest.hexdigest()


def fetch(dataset: Dataset, directory: str, url: str | None = None, md5: str | None = None,
          progress=print) -> str:
  """The path of `dataset`'s archive in `directory`, downloaded there when absent."""
  path = os.path.join(directory, dataset.archive)
  md5 = _checked_md5(md5) or dataset.archive_md5.lower()
  url = _checked_url(url) if url is not None else datasets.DOWNLOAD_URL + dataset.archive
  _check_places(directory, path)
  if os.path.exists(path):
    return _checked_archive(dataset, path, md5, progress)
  try:
    os.makedirs(directory, exist_ok=True)
    with files.replaced_atomically(path, "wb") as out:
      found = _download(url, out, progress)
      if found != md5:
        raise DataError(f"{url}: the download's MD5 is {found}, not {md5}; nothing was kept")
  except OSError as e:  # making the folder or the partial file, or renaming it into place
    raise DataError(f"--dir {directory!r}: cannot write there ({e.strerror or e})") from e
  progress(f"{path}: {dataset.title}, MD5 {md5} checked")
  return path


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", choices=sorted(datasets.DATASETS), default="cifar10")
  parser.add_argument("--dir", required=True, help="folder to keep the archive in")
  parser.add_argument("--url", help="a mirror of the archive, instead of CIFAR's site")
  parser.add_argument("--md5", help="the mirror's archive's MD5, when it is not CIFAR's")
  args = parser.parse_args(argv)
  try:
    path = fetch(datasets.DATASETS[args.dataset], args.dir, args.url, args.md5,
                 progress=lambda line: print(line, file=sys.stderr, flush=True))
  except DataError as e:
    # One line even where an OS or server message has a newline in it.
    raise SystemExit("error: " + " ".join(str(e).splitlines())) from None
  print(path)


if __name__ == "__main__":
  main()
