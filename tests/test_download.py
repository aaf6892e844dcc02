"""CIFAR's archive downloaded and checked (data/download.py), from a local URL: no network."""

import contextlib
import dataclasses
import errno
import io
import os
import pathlib

import numpy as np
import pytest

from resnet_jax.data import datasets, download, sources
from tests.conftest import data_config

CIFAR10 = datasets.DATASETS["cifar10"]


@pytest.fixture
def served(cifar_archive, tmp_path):
  """(the archive's file:// URL, its MD5, the arrays in it), as if CIFAR's site served it."""
  archive, arrays = cifar_archive
  return pathlib.Path(archive).as_uri(), download.md5_of(archive), arrays


def test_a_download_checks_its_md5_and_reads_like_the_files(served, tmp_path):
  url, md5, arrays = served
  lines = []
  path = download.fetch(dataclasses.replace(CIFAR10, archive_md5=md5), str(tmp_path / "data"),
                        url=url, progress=lines.append)
  assert path == str(tmp_path / "data" / "cifar-10-python.tar.gz")
  assert os.listdir(tmp_path / "data") == ["cifar-10-python.tar.gz"]  # no .part left
  assert any("MiB" in line for line in lines) and "checked" in lines[-1]
  images, labels = sources.load_split(data_config(path), "test")
  np.testing.assert_array_equal(images, arrays["test"][0])
  np.testing.assert_array_equal(labels, arrays["test"][1])
  # Kept: a second call reads nothing from the URL.
  assert download.fetch(dataclasses.replace(CIFAR10, archive_md5=md5), str(tmp_path / "data"),
                        url="file:///no/such/file", progress=lines.append) == path


def test_a_download_of_other_bytes_is_an_error_and_keeps_nothing(served, tmp_path):
  url, md5, _ = served
  with pytest.raises(datasets.DataError, match=f"MD5 is {md5}, not {CIFAR10.archive_md5}"):
    download.fetch(CIFAR10, str(tmp_path / "data"), url=url, progress=lambda _: None)
  assert os.listdir(tmp_path / "data") == []


def test_a_full_disk_while_downloading_is_named_as_the_folder_s_not_the_url_s(served, tmp_path,
                                                                               monkeypatch):
  url, md5, _ = served

  class FullDisk(io.BytesIO):
    def write(self, chunk):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(download.files, "replaced_atomically",
                      lambda *args, **kwargs: contextlib.nullcontext(FullDisk()))
  folder = str(tmp_path / "data")
  with pytest.raises(datasets.DataError, match=f"--dir '{folder}': cannot write there "
                     r"\(No space left on device\)$"):
    download.fetch(dataclasses.replace(CIFAR10, archive_md5=md5), folder, url=url,
                   progress=lambda _: None)


def test_an_unreachable_url_names_itself_and_where_to_get_the_archive(tmp_path):
  with pytest.raises(datasets.DataError, match="file:///no/such/archive.tar.gz failed.*kriz"):
    download.fetch(CIFAR10, str(tmp_path), url="file:///no/such/archive.tar.gz")
  assert os.listdir(tmp_path) == []


def test_an_archive_already_there_with_another_md5_is_named_and_left_alone(tmp_path, capsys):
  (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not CIFAR")
  with pytest.raises(SystemExit, match="cifar-10-python.tar.gz: MD5 .* move it away"):
    download.main(["--dir", str(tmp_path), "--url", "file:///unused"])
  assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == b"not CIFAR"


def test_the_command_line_prints_the_path_for_config_data_dir(served, tmp_path, capsys):
  url, md5, _ = served
  download.main(["--dir", str(tmp_path / "d"), "--url", url, "--md5", md5])
  assert capsys.readouterr().out.strip() == str(tmp_path / "d" / "cifar-10-python.tar.gz")


# Files and arguments from strangers (issue 37, item 5): each case is one line
# `error: ...` naming the argument and its value, or a download that goes ahead, and
# never a write to, or a removal of, anything already in the folder.

def contents(directory) -> dict:
  """Every entry of `directory`: a link as ("link", its target), a file as its bytes."""
  return {p.name: ("link", os.readlink(p)) if p.is_symlink() else
          p.read_bytes() if p.is_file() else "folder" for p in pathlib.Path(directory).iterdir()}


def error_of(argv) -> str:
  with pytest.raises(SystemExit) as raised:
    download.main(argv)
  message = raised.value.code
  assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message
  return message


@pytest.mark.parametrize("md5_is_right", [True, False])
def test_a_planted_part_link_is_never_written_through_or_removed(served, tmp_path, capsys,
                                                                 md5_is_right):
  url, md5, _ = served
  target = tmp_path / "precious"
  target.write_bytes(b"not to be overwritten")
  folder = tmp_path / "d"
  folder.mkdir()
  (folder / "cifar-10-python.tar.gz.part").symlink_to(target)
  argv = ["--dir", str(folder), "--url", url, "--md5", md5 if md5_is_right else "0" * 32]
  if md5_is_right:
    download.main(argv)
    assert capsys.readouterr().out.strip() == str(folder / "cifar-10-python.tar.gz")
    assert download.md5_of(str(folder / "cifar-10-python.tar.gz")) == md5
  else:  # "nothing was kept" is true: the link was never the download's
    assert "nothing was kept" in error_of(argv)
  assert target.read_bytes() == b"not to be overwritten"
  assert (folder / "cifar-10-python.tar.gz.part").is_symlink()
  assert sorted(os.listdir(folder)) == ["cifar-10-python.tar.gz"] * md5_is_right + [
      "cifar-10-python.tar.gz.part"]


def test_a_planted_part_file_is_left_as_it_is(served, tmp_path):
  url, md5, _ = served
  folder = tmp_path / "d"  # tmp_path holds the served archive itself
  folder.mkdir()
  (folder / "cifar-10-python.tar.gz.part").write_bytes(b"someone else's")
  download.main(["--dir", str(folder), "--url", url, "--md5", md5])
  assert (folder / "cifar-10-python.tar.gz.part").read_bytes() == b"someone else's"
  assert sorted(os.listdir(folder)) == ["cifar-10-python.tar.gz", "cifar-10-python.tar.gz.part"]


def test_an_upper_case_md5_is_the_same_md5(served, tmp_path):
  url, md5, _ = served
  folder = tmp_path / "d"
  download.main(["--dir", str(folder), "--url", url, "--md5", md5.upper()])
  archive = (folder / "cifar-10-python.tar.gz").read_bytes()
  # And the archive now there passes the upper-case check too, untouched.
  download.main(["--dir", str(folder), "--url", "file:///unused", "--md5", md5.upper()])
  assert (folder / "cifar-10-python.tar.gz").read_bytes() == archive


@pytest.mark.parametrize("md5", ["abc", "g" * 32, "0" * 33, ""])
def test_an_md5_that_is_not_32_hex_digits_is_named(tmp_path, md5):
  (tmp_path / "kept").write_bytes(b"kept")
  message = error_of(["--dir", str(tmp_path), "--url", "file:///unused", "--md5", md5])
  assert f"--md5 {md5!r}" in message and "32 hex digits" in message
  assert contents(tmp_path) == {"kept": b"kept"}


def test_a_dir_that_is_a_file_is_named(tmp_path):
  (tmp_path / "f").write_bytes(b"a file")
  message = error_of(["--dir", str(tmp_path / "f"), "--url", "file:///unused"])
  assert message == f"error: --dir {str(tmp_path / 'f')!r}: not a folder"
  assert contents(tmp_path) == {"f": b"a file"}


def test_a_dir_that_cannot_be_made_is_named(tmp_path):
  (tmp_path / "f").write_bytes(b"a file")
  below_a_file = str(tmp_path / "f" / "d")  # OSError (not a directory), as root too
  assert f"--dir {below_a_file!r}: cannot write there" in error_of(
      ["--dir", below_a_file, "--url", "file:///unused"])
  assert contents(tmp_path) == {"f": b"a file"}


def test_an_archive_path_that_is_a_folder_is_named(tmp_path):
  (tmp_path / "cifar-10-python.tar.gz").mkdir()
  (tmp_path / "cifar-10-python.tar.gz" / "inside").write_bytes(b"inside")
  message = error_of(["--dir", str(tmp_path), "--url", "file:///unused"])
  assert f"{str(tmp_path / 'cifar-10-python.tar.gz')!r} is not a file" in message
  assert contents(tmp_path) == {"cifar-10-python.tar.gz": "folder"}
  assert contents(tmp_path / "cifar-10-python.tar.gz") == {"inside": b"inside"}


@pytest.mark.parametrize("url", ["notaurl", "http://", "ftp:/x", "gopher://host/x", "file:",
                                 "http://[::1/x", "http://a b/", "http://host/\nx"])
def test_a_malformed_url_is_named(tmp_path, url):
  (tmp_path / "kept").write_bytes(b"kept")
  message = error_of(["--dir", str(tmp_path), "--url", url])
  assert message.startswith(f"error: --url {url!r}: not a URL")
  assert contents(tmp_path) == {"kept": b"kept"}
