"""Converting seed PyTorch checkpoints: mapping, error cases, Orbax output."""

import os
import re
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest
import torch

from resnet_jax import checkpoints, convert_torch, models
from tests import torch_reference
from tests.conftest import CIFAR10_IMAGE


@pytest.fixture(scope="module")
def shallow_state():
  torch.manual_seed(0)
  model = torch_reference.ShallowResNet()
  torch_reference.randomize_batchnorm(model, torch.Generator().manual_seed(1))
  return model.state_dict()


def test_torch_key_names():
  assert convert_torch.torch_key(("params", "layer1_0", "downsample_conv", "kernel")) == \
      "layer1.0.downsample.0.weight"
  assert convert_torch.torch_key(("batch_stats", "layer3_1", "bn2", "var")) == \
      "layer3.1.bn2.running_var"
  assert convert_torch.torch_key(("params", "bn1", "scale")) == "bn1.weight"
  assert convert_torch.torch_key(("params", "fc", "bias")) == "fc.bias"


def test_numpy_values_convert_like_tensors(shallow_state):
  from_torch = convert_torch.convert_state_dict(shallow_state, "shallow")
  from_numpy = convert_torch.convert_state_dict(
      {k: v.numpy() for k, v in shallow_state.items()}, "shallow")
  jax.tree.map(np.testing.assert_array_equal, from_torch, from_numpy)
  kernel = from_torch["params"]["layer1_0"]["conv1"]["kernel"]
  np.testing.assert_array_equal(kernel, shallow_state["layer1.0.conv1.weight"].numpy()
                                .transpose(2, 3, 1, 0))


def test_deep_head_is_permuted_from_chw_to_hwc_flatten_order():
  torch.manual_seed(0)
  state = torch_reference.DeepResNet().state_dict()
  kernel = convert_torch.convert_state_dict(state, "deep")["params"]["fc"]["kernel"]
  weight = state["fc.weight"].numpy()  # (10, 256*3*3), input index c*9 + h*3 + w
  for h, w, c in [(0, 0, 0), (1, 2, 5), (2, 1, 255)]:
    np.testing.assert_array_equal(kernel[(h * 3 + w) * 256 + c], weight[:, c * 9 + h * 3 + w])


@pytest.mark.parametrize("change,model,message", [
    ({"layer2.0.downsample.0.weight": None}, "shallow",
     r"missing key 'layer2.0.downsample.0.weight' \(model expects shape \(128, 64, 1, 1\)\)"),
    ({"fc2.weight": torch.zeros(3, 4)}, "shallow",
     r"unexpected key 'fc2.weight' \(shape \(3, 4\)\)"),
    ({"fc.weight": torch.zeros(10, 512)}, "shallow",
     r"key 'fc.weight' has shape \(10, 512\), model expects \(10, 256\)"),
    ({}, "deep", r"(?s)does not fit model 'deep':\n.*missing key 'layer4.0.conv1.weight'"),
])
def test_a_state_dict_that_does_not_fit_the_model_is_named(shallow_state, change, model,
                                                          message):
  """Each entry missing, unexpected or misshaped, or another model's weights: None deletes."""
  state = {k: v for k, v in {**shallow_state, **change}.items() if v is not None}
  with pytest.raises(convert_torch.ConversionError, match=message):
    convert_torch.convert_state_dict(state, model)


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "resnet_jax.convert_torch", *args],
                        capture_output=True, text=True)


def test_cli_writes_an_orbax_checkpoint_that_restores(tmp_path, shallow_state):
  pth = tmp_path / "ModifiedResNet.pth"
  torch.save({"epoch": 30, "model_state_dict": shallow_state}, pth)
  result = _run_cli("--model", "shallow", "--checkpoint", str(pth), "--output",
                    str(tmp_path / "out"))
  assert result.returncode == 0, result.stderr
  model, variables, meta = checkpoints.restore_model(str(tmp_path / "out"), CIFAR10_IMAGE)
  assert meta["source"] == "convert_torch" and meta["model"]["name"] == "shallow"
  assert model == models.get_model("shallow")
  expected = convert_torch.convert_state_dict(shallow_state, "shallow")
  jax.tree.map(np.testing.assert_array_equal, dict(variables), expected)

  # A second conversion into the same workdir refuses and leaves the first intact.
  before = sorted(os.listdir(tmp_path / "out" / "checkpoints" / "0"))
  again = _run_cli("--model", "shallow", "--checkpoint", str(pth), "--output",
                   str(tmp_path / "out"))
  assert again.returncode != 0 and "already exists" in again.stderr
  assert sorted(os.listdir(tmp_path / "out" / "checkpoints" / "0")) == before


def test_cli_bare_state_dict_of_wrong_model_names_keys_and_writes_nothing(tmp_path,
                                                                          shallow_state):
  pth = tmp_path / "bare.pth"
  torch.save(shallow_state, pth)
  result = _run_cli("--model", "deep", "--checkpoint", str(pth), "--output", str(tmp_path / "o"))
  assert result.returncode != 0
  assert "missing key 'layer4.1.bn2.running_var'" in result.stderr
  assert not (tmp_path / "o").exists()


def test_cli_missing_and_corrupt_files_are_named(tmp_path):
  corrupt = tmp_path / "corrupt.pth"
  corrupt.write_bytes(b"not a zip or pickle")
  missing = tmp_path / "nope.pth"
  for pth, error in ((missing, f"error: no PyTorch checkpoint at {missing}"),
                     (corrupt, f"error: cannot read {corrupt} as a PyTorch checkpoint: ")):
    result = _run_cli("--model", "shallow", "--checkpoint", str(pth), "--output",
                      str(tmp_path / "o"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(error), result.stderr[-2000:]
  assert not (tmp_path / "o").exists()


class _RunsCode:
  """Unpickled by a loader that runs code, it would make a directory."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.mkdir, (self.marker,)


def test_a_pth_whose_pickle_would_run_code_is_refused_in_one_line(tmp_path):
  pth, marker = tmp_path / "model.pth", tmp_path / "ran"
  torch.save({"fc.bias": torch.zeros(10), "fc.weight": _RunsCode(str(marker))}, pth)
  with pytest.raises(convert_torch.ConversionError) as info:
    convert_torch.load_state_dict(str(pth))
  message = str(info.value)  # torch's reason varies by version; its advice must not show
  assert message.startswith(f"cannot read {pth} as a PyTorch checkpoint: not a pickle of "
                            "tensors that loads without running code (")
  assert "mkdir" in message and "weights_only" not in message and "\n" not in message, message
  assert not marker.exists()


def test_a_file_of_something_other_than_a_state_dict_is_named(tmp_path):
  pth, scripted, empty = tmp_path / "list.pth", tmp_path / "scripted.pt", tmp_path / "empty.pth"
  torch.save([torch.zeros(2)], pth)
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
  empty.write_bytes(b"")
  for path, message in (
      (pth, "holds a list, not a state_dict or a dict with 'model_state_dict'"),
      (scripted, "as a PyTorch checkpoint: a TorchScript archive (torch.jit.save), not a "
                 "state_dict: save model.state_dict() with torch.save"),
      (empty, "as a PyTorch checkpoint: the file ends early")):
    with pytest.raises(convert_torch.ConversionError) as info:
      convert_torch.load_state_dict(str(path))
    assert str(info.value).endswith(message) and str(path) in str(info.value)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def _refuse_conversion(*args):
  raise AssertionError("a value was converted before every entry was checked")


@pytest.mark.parametrize("state,message", [
    ({3: torch.zeros(2)}, r"key 3 \(int\) is not a parameter name \(str\)"),
    ({"fc.bias": torch.zeros(10).to_sparse()},
     r"key 'fc.bias' is a torch.sparse_coo tensor; weights are dense \(torch.strided\)"),
    ({"fc.bias": torch.zeros(1).expand(10**9)},
     r"key 'fc.bias' of shape \(1000000000,\) has strides \(0,\), which repeat elements"),
    ({"fc.weight": torch.zeros(41).as_strided((10, 32), (1, 1))},
     r"key 'fc.weight' of shape \(10, 32\) has strides \(1, 1\), which repeat elements"),
    ({"fc.bias": torch.zeros(10, dtype=torch.int64)},
     r"key 'fc.bias' has dtype torch.int64; weights are floating point"),
    ({"fc.bias": [0.0] * 10}, r"key 'fc.bias' holds a list, not a tensor"),
])
def test_bad_entry_of_a_file_is_one_line_naming_file_and_key(tmp_path, monkeypatch, state,
                                                             message):
  pth = tmp_path / "bad.pth"
  torch.save(state, pth)
  monkeypatch.setattr(convert_torch, "_as_numpy", _refuse_conversion)  # nothing materialised
  with pytest.raises(convert_torch.ConversionError,
                     match=f"^{re.escape(str(pth))}: {message}") as info:
    convert_torch.convert_checkpoint("shallow", str(pth), str(tmp_path / "o"))
  assert "\n" not in str(info.value)
  assert not (tmp_path / "o").exists()


def test_non_finite_value_is_named(shallow_state):
  state = {**shallow_state, "layer2.0.bn1.running_var": torch.full((128,), float("nan"))}
  with pytest.raises(convert_torch.ConversionError,
                     match=r"^key 'layer2.0.bn1.running_var' holds NaN or infinite values$"):
    convert_torch.convert_state_dict(state, "shallow")


def test_negative_variances_are_named(shallow_state):
  """BatchNorm's 1/sqrt(var + eps) would be NaN: every prediction one class."""
  state = {**shallow_state, "layer2.0.bn1.running_var": -torch.ones(128)}
  with pytest.raises(convert_torch.ConversionError,
                     match=r"^key 'layer2.0.bn1.running_var' holds negative variances$"):
    convert_torch.convert_state_dict(state, "shallow")


def test_a_compressed_pth_is_refused_before_torch_inflates_it(tmp_path, monkeypatch):
  """torch.save never compresses; a deflated member (100 MB of zeros in 98 KB) would be
  inflated by torch.load before any check."""
  stored, deflated = tmp_path / "stored.pth", tmp_path / "deflated.pth"
  torch.save({"fc.bias": torch.zeros(10)}, stored)
  with zipfile.ZipFile(stored) as source, zipfile.ZipFile(deflated, "w") as target:
    for info in source.infolist():
      target.writestr(info.filename, source.read(info), zipfile.ZIP_DEFLATED)
  monkeypatch.setattr(torch, "load", _refuse_conversion)  # never reached
  with pytest.raises(convert_torch.ConversionError,
                     match=f"^cannot read {re.escape(str(deflated))} as a PyTorch checkpoint: its "
                           r"member '.*' is compressed, which torch.save never does$"):
    convert_torch.load_state_dict(str(deflated))


def test_an_output_that_cannot_be_written_is_named_before_the_file_is_read(tmp_path,
                                                                           monkeypatch):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  monkeypatch.setattr(convert_torch, "load_state_dict", _refuse_conversion)
  with pytest.raises(convert_torch.ConversionError,
                     match=f"^--output {re.escape(str(blocker))} cannot be written \\(Not a "
                           "directory"):
    convert_torch.convert_checkpoint("shallow", str(tmp_path / "any.pth"), str(blocker))
  assert blocker.read_text() == "x"


def test_tensor_past_its_storage_is_refused_by_torch_load(tmp_path):
  """A file whose tensor claims more elements than its storage holds: torch.load refuses it."""
  good, bad = tmp_path / "good.pth", tmp_path / "bad.pth"
  torch.save({"fc.bias": torch.zeros(77)}, good)
  with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
    for info in source.infolist():
      data = source.read(info)
      if info.filename.endswith("data.pkl"):  # the size tuple's (77,) -> (200,): 'K' 77 -> 200
        size_at = data.index(b"KM", data.index(b"KM") + 1)
        data = data[:size_at] + b"K\xc8" + data[size_at + 2:]
      target.writestr(info, data)
  with pytest.raises(convert_torch.ConversionError,
                     match=f"^cannot read {re.escape(str(bad))} as a PyTorch checkpoint: "
                           ".*storage"):
    convert_torch.load_state_dict(str(bad))


def test_cli_expanded_tensor_is_one_error_line_without_traceback(tmp_path):
  pth = tmp_path / "expanded.pth"
  torch.save({"fc.bias": torch.zeros(1).expand(10**9)}, pth)
  result = _run_cli("--model", "shallow", "--checkpoint", str(pth), "--output",
                    str(tmp_path / "o"))
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(f"error: {pth}: key 'fc.bias' ")
