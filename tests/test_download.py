"""CIFAR's archive downloaded and checked (data/download.py), from a local URL: no network."""

import dataclasses
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
