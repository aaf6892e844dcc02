"""scripts/profile_step.py: each op put in its kind, the wall shared among XLA's thunks, both
sides profiled in its tiny mode."""

import gzip
import json
import os
import sys

import pytest

from tests.conftest import load_script


@pytest.mark.parametrize("name, kind", [
    ("conv_general_dilated.28", "convolution"), ("ConvolutionBackward0", "convolution"),
    ("aten::mkldnn_convolution", "convolution"), ("convert_bitcast_fusion.2", "elementwise and other"),
    ("reduce-window.2", "pooling"),
    ("aten::max_pool2d_with_indices", "pooling"), ("aten::native_batch_norm", "batchnorm"),
    ("NativeBatchNormBackward0", "batchnorm"), ("dot.3", "matmul"), ("aten::addmm", "matmul"),
    ("aten::mm", "matmul"), ("transpose_copy_fusion.1", "transpose and copy"),
    ("aten::_to_copy", "transpose and copy"), ("add_reduce_fusion", "reduction"),
    ("aten::sum", "reduction"), ("multiply_select_fusion", "elementwise and other"),
    ("aten::add_", "elementwise and other"),
    ("custom-call.1.clone__onednn$convolution", "convolution")])
def test_an_op_is_put_in_its_kind_by_name(name, kind):
  assert load_script("profile_step").kind(name) == kind


def _write_trace(directory, events, run="run", mtime=None):
  (directory / run).mkdir(parents=True)
  with gzip.open(directory / run / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  if mtime is not None:
    os.utime(directory / run / "perfetto_trace.json.gz", (mtime, mtime))


def test_a_rerun_into_the_same_folder_reads_its_own_trace(tmp_path):
  """Each profiled run adds a trace folder: the newest is this run's, whatever the order
  the directory lists them in."""
  fusion = lambda dur: [{"ph": "X", "name": "fusion.1", "ts": 0, "dur": dur, "pid": 1,
                         "tid": 1}]
  _write_trace(tmp_path, fusion(5), run="2026_12_07_09", mtime=2_000_000_000)  # this run's
  _write_trace(tmp_path, fusion(9), run="2026_12_07_10", mtime=1_000_000_000)
  thunk_us = load_script("profile_step")._thunk_us  # pylint: disable=protected-access
  assert thunk_us(str(tmp_path)) == {"fusion.1": 5}


def test_the_wall_is_shared_among_the_thunks_running_at_each_moment(tmp_path):
  """A conditional (a fusion barrier) counts only while nothing inside it runs; an async
  thunk runs until its "end:" event; the runtime's own events are no thunks."""
  x = lambda name, ts, dur, tid=1: {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": 1,
                                     "tid": tid}
  _write_trace(tmp_path, [
      x("cond.1", 0, 10), x("conv_general_dilated.2", 2, 1), x("end: conv_general_dilated.2", 7, 1),
      x("fusion.3", 1, 4, tid=2), x("fusion.4", 12, 3), x("end: fusion.4", 19, 1, tid=2),
      x("custom-call.1.clone__onednn$convolution", 20, 2), x("ThunkExecutor::Execute", 0, 30)])
  assert load_script("profile_step")._thunk_us(str(tmp_path)) == {  # pylint: disable=protected-access
      "cond.1": 3, "fusion.3": 2.5, "conv_general_dilated.2": 4.5, "fusion.4": 8,
      "custom-call.1.clone__onednn$convolution": 2}


def test_a_trace_the_profiler_cut_short_is_an_error(tmp_path, monkeypatch):
  profile_step = load_script("profile_step")
  monkeypatch.setattr(profile_step, "TRACE_EVENT_LIMIT", 2)
  _write_trace(tmp_path, [{"ph": "X", "name": "fusion", "ts": 0, "dur": 1}] * 2)
  with pytest.raises(SystemExit, match="hit the profiler's 2 events"):
    profile_step._thunk_us(str(tmp_path))  # pylint: disable=protected-access


def test_both_sides_are_profiled_in_the_tiny_mode(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["profile_step.py", "--out", str(tmp_path), "--tiny",
                                    "--steps", "1"])
  load_script("profile_step").main()  # in this process: its imports are already paid for
  report = json.loads((tmp_path / "profile.json").read_text())
  assert report["tiny"] and json.loads(capsys.readouterr().out) == {
      side: report[side]["wall_ms_per_step"] for side in ("jax", "torch")}
  for side in ("jax", "torch"):
    kinds = report[side]["kinds"]
    assert kinds["convolution"]["ms_per_step"] > 0, side
    assert sum(k["share"] for k in kinds.values()) == pytest.approx(1, abs=0.01), side
    assert len(report[side]["top_ops"]) == 10, side
  assert (tmp_path / "jax_trace").is_dir()


def test_no_step_to_profile_is_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(sys, "argv", ["profile_step.py", "--out", str(tmp_path / "o"),
                                    "--steps", "0"])
  with pytest.raises(SystemExit, match="--steps 0"):
    load_script("profile_step").main()
  assert not (tmp_path / "o").exists()
