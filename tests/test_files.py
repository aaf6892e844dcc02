"""files.py: outputs replaced whole, never written through a link, permissions kept."""

import os
import stat

import pytest

from resnet_jax import files


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_beside_it(tmp_path):
  path = tmp_path / "out.csv"
  path.write_text("old")
  with pytest.raises(OSError, match="disk full"):
    with files.replaced_atomically(str(path)) as f:
      f.write("half of the new")
      raise OSError("disk full")
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.csv"]


def test_an_existing_file_keeps_its_permissions_and_a_link_is_replaced_not_followed(tmp_path):
  private, target, link = tmp_path / "private.csv", tmp_path / "target", tmp_path / "link.csv"
  private.write_text("old")
  os.chmod(private, 0o600)
  target.write_text("someone else's")
  link.symlink_to(target)
  for path in (private, link):
    with files.replaced_atomically(str(path)) as f:
      f.write("new")
  assert stat.S_IMODE(os.stat(private).st_mode) == 0o600 and private.read_text() == "new"
  assert not link.is_symlink() and link.read_text() == "new"
  assert target.read_text() == "someone else's"


def test_only_whole_files_are_written():
  with pytest.raises(ValueError, match="mode 'a': a replaced file is written whole"):
    with files.replaced_atomically("unused", "a"):
      pass


def test_a_name_as_long_as_the_file_system_allows_is_written(tmp_path):
  """The temporary file beside it has a shorter name (it would fail after the compute)."""
  path = tmp_path / ("n" * 251 + ".csv")  # 255 bytes, ext4's and tmpfs's limit
  files.check_writable(str(path), "--output")
  with files.replaced_atomically(str(path)) as f:
    f.write("ID,Labels\n")
  assert path.read_text() == "ID,Labels\n"
