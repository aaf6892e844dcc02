"""A dataset's own archive from CIFAR's site, checked against its published MD5.

    python -m resnet_jax.data.download --dataset cifar10 --dir DIR [--url URL --md5 MD5]

prints the archive's path, which `config.data.source='files'` reads as
`config.data.dir` (no unpacking needed). The data without TensorFlow or TFDS:
a Colab TPU runtime has no TensorFlow (scripts/colab_tpu.ipynb). --url and --md5
name a mirror and its checksum instead of CIFAR's own.

An archive already in DIR with the right MD5 is used as it is; one with another
is an error and is left alone. A download goes to a `.part` file beside it and
takes the archive's name only once its MD5 matches, so an interrupted or corrupt
download never passes for the archive.
"""

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request

from resnet_jax.data import datasets
from resnet_jax.data.datasets import Dataset, DataError

CHUNK = 1 << 20


def md5_of(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(CHUNK), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _download(url: str, part: str, progress) -> str:
  """Writes `url` to `part`, reporting every tenth of it; returns the MD5 of what came."""
  digest = hashlib.md5()
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(part, "wb") as out:
      total, done, reported = int(response.headers.get("Content-Length") or 0), 0, 0
      for chunk in iter(lambda: response.read(CHUNK), b""):
        out.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        if total and done * 10 // total > reported:
          reported = done * 10 // total
          progress(f"{url}: {done / 2**20:.1f} of {total / 2**20:.1f} MiB")
  except (urllib.error.URLError, OSError) as e:
    raise DataError(f"downloading {url} failed ({e}); download it yourself from "
                    f"{datasets.DOWNLOAD_PAGE} into the folder, or copy a torchvision or "
                    "keras cache of it there") from e
  return digest.hexdigest()


def fetch(dataset: Dataset, directory: str, url: str | None = None, md5: str | None = None,
          progress=print) -> str:
  """The path of `dataset`'s archive in `directory`, downloaded there when absent."""
  path = os.path.join(directory, dataset.archive)
  md5 = md5 or dataset.archive_md5
  if os.path.exists(path):
    found = md5_of(path)
    if found != md5:
      raise DataError(f"{path}: MD5 {found}, not {md5} (that of {dataset.title}'s "
                      f"{dataset.archive}); move it away to download the archive again")
    progress(f"{path}: already here, MD5 {md5} checked")
    return path
  url = url or datasets.DOWNLOAD_URL + dataset.archive
  os.makedirs(directory, exist_ok=True)
  part = path + ".part"
  try:
    found = _download(url, part, progress)
    if found != md5:
      raise DataError(f"{url}: the download's MD5 is {found}, not {md5}; nothing was kept")
    os.replace(part, path)
  finally:
    if os.path.exists(part):
      os.remove(part)
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
    raise SystemExit(f"error: {e}") from None
  print(path)


if __name__ == "__main__":
  main()
