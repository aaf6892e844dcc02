"""Training end to end on the smoke config, data parallelism, dtypes, XLA:CPU settings."""

import dataclasses
import functools
import glob
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from resnet_jax import config_validation, model_setup, optim, train, xla_cpu
from resnet_jax.data import batches
from tests.conftest import REPO, on_train_batches, smoke_config as _smoke


def test_smoke_config_trains_and_its_loss_falls(trained):
  workdir, state, history = trained
  assert [h["epoch"] for h in history] == [1, 2, 3]
  assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
  assert history[-1]["eval_accuracy"] > 0.6
  assert all(h["learning_rate"] == pytest.approx(3e-3) for h in history)
  assert int(state.step) == 3 * 16
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))  # TensorBoard summaries


def test_bfloat16_trains_and_keeps_float32_parameters(tmp_path):
  state, history = train.train_and_evaluate(_smoke(dtype="bfloat16", num_epochs=2),
                                            str(tmp_path))
  dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats))}
  assert dtypes == {jnp.dtype(jnp.float32)}
  assert np.isfinite(history[-1]["train_loss"])
  assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_accumulation_never_carries_over_an_epoch_and_plateau_scale_is_logged(tmp_path):
  config = _smoke(**{"optimizer.accumulation_steps": 3, "optimizer.plateau.enabled": True,
                     "optimizer.plateau.metric": "eval_loss", "optimizer.plateau.patience": 0,
                     "optimizer.plateau.rtol": 0.99})
  state, history = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 3 * 15  # 16 batches an epoch, 5 whole groups of 3
  assert int(state.opt_state.mini_step) == 0
  # rtol 0.99 makes every epoch after the first a non-improvement; patience 0
  # cuts the lr at the end of epoch 2, so epoch 3 runs at a tenth.
  lrs = [h["learning_rate"] for h in history]
  np.testing.assert_allclose(lrs, [3e-3, 3e-3, 3e-4], rtol=1e-5)


def test_device_pipeline_trains_the_smoke_config(tmp_path):
  config = _smoke(**{"data.pipeline": "device", "num_epochs": 2})
  state, history = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 2 * 16
  assert history[-1]["train_loss"] < history[0]["train_loss"]
  assert history[-1]["eval_accuracy"] > 0.3


def test_dtype_auto_is_bfloat16_where_the_hardware_runs_it_fast(monkeypatch):
  auto = functools.partial(_smoke, dtype="auto")  # smoke.py fixes float32
  monkeypatch.setattr(xla_cpu, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
  assert model_setup.compute_dtype(auto()) == (
      "float32", "dtype auto: this CPU has no bfloat16 instructions (none of avx512_bf16, "
      "amx_bf16)")
  assert model_setup.build_model(auto()).dtype == "float32"
  monkeypatch.setattr(xla_cpu, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
  if xla_cpu.onednn_bfloat16_convolutions():  # jaxlib 0.12
    dtype, why = model_setup.compute_dtype(auto())
    assert dtype == "bfloat16" and "this CPU has avx512_bf16 and jaxlib" in why
  else:  # older jaxlibs (the lower bounds', Colab's) convert bfloat16 to float32 for Eigen
    assert model_setup.compute_dtype(auto()) == ("float32", f"dtype auto: jaxlib "
        f"{jax.lib.__version__} has no oneDNN bfloat16 convolutions (jaxlib 0.12 has them)")
  # A resumed run keeps the dtype it was trained in; an explicit value wins over both.
  assert model_setup.compute_dtype(auto(), trained_in="float32")[0] == "float32"
  assert model_setup.compute_dtype(_smoke(), trained_in="bfloat16")[0] == "float32"
  monkeypatch.setattr(xla_cpu, "on_cpu", lambda: False)  # as on a GPU or TPU
  assert model_setup.compute_dtype(auto())[0] == "bfloat16"
  assert model_setup.build_model(auto()).dtype == "bfloat16"


@pytest.mark.skipif(not xla_cpu.onednn_bfloat16_convolutions(),
                    reason=f"jaxlib {jax.lib.__version__} has no oneDNN convolutions")
@pytest.mark.parametrize("dtype,onednn", [("bfloat16", True), ("float32", False)])
def test_bfloat16_steps_convolve_through_onednn_and_float32_ones_through_eigen(
    dtype, onednn, monkeypatch):
  monkeypatch.setattr(xla_cpu, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
  hlo = _compiled_train_step(_smoke(dtype=dtype))
  assert ("__onednn$convolution" in hlo) == onednn
  monkeypatch.setattr(xla_cpu, "cpu_flags", lambda: frozenset({"avx2"}))  # would emulate them
  assert "__onednn$convolution" not in _compiled_train_step(_smoke(dtype=dtype))


def test_the_cache_failing_to_store_onednn_steps_is_one_log_line(caplog):
  """XLA:CPU cannot serialise oneDNN's calls: jax's warning at every compile is replaced by
  one log line; any other failure to write the cache still warns."""
  xla_cpu._log_uncacheable.cache_clear()  # pylint: disable=protected-access
  failed = "Error writing persistent compilation cache entry for 'jit_train_step': "
  with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
    warnings.simplefilter("always")
    xla_cpu.quiet_uncacheable({"xla_cpu_experimental_onednn_custom_call": True})
    xla_cpu.quiet_uncacheable({"xla_cpu_experimental_onednn_custom_call": True})
    warnings.warn(failed + "MemoryError: std::bad_alloc", UserWarning)
    warnings.warn(failed + "OSError: [Errno 28] No space left on device", UserWarning)
  assert [str(w.message) for w in caught] == [failed + "OSError: [Errno 28] No space left on "
                                                       "device"]
  assert caplog.text.count("compile in each process") == 1


def test_the_dtype_probe_compiles_without_a_cache_warning(tmp_path):
  """dtype auto's probe compiles a oneDNN convolution before any step: under the persistent
  cache (main's default) it must not print the warning the steps' compiles no longer do."""
  probe = textwrap.dedent(f"""
      import warnings
      from resnet_jax import main, xla_cpu
      main.enable_compilation_cache({str(tmp_path)!r})
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onednn = xla_cpu.onednn_bfloat16_convolutions()
      print(onednn, [str(w.message) for w in caught if "compilation cache" in str(w.message)])
      """)
  result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          cwd=REPO, check=True)
  assert result.stdout.split(" ", 1)[1].strip() == "[]", result.stdout + result.stderr[-2000:]


def test_deep_config_trains_with_its_augmentation_on_the_device_pipeline(tmp_path):
  from configs import deep  # pylint: disable=g-import-not-at-top
  config = deep.get_config()
  assert config.data.pipeline == "device"
  assert config.data.augment.rotation and config.data.augment.hue  # the deep preset's
  # Smoke-sized: a tiny model of the deep layout, generated data, one epoch.
  config.model.update(stem_width=4, stage_widths=(4, 4, 4, 4), stage_blocks=(1, 1, 1, 1))
  config.data.update(source="synthetic", eval_split="test", synthetic_train_size=192,
                     synthetic_test_size=64)
  config.update(num_epochs=1, eval_batch_size=64)
  state, history = train.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 3  # 192 / 64 batches: one update of 3 accumulated mini-batches
  assert np.isfinite(history[-1]["train_loss"]) and np.isfinite(history[-1]["eval_loss"])


def _compiled_train_step(config) -> str:
  """The HLO text of `config`'s train step as XLA compiled it (what its options produced)."""
  model = model_setup.build_model(config)
  steps = train.Steps(config, model, total_steps=10 * config.num_epochs)
  tx, _ = optim.create_optimizer(config.optimizer, 10, config.num_epochs)
  state = steps.place_state(train.create_train_state(config, model, tx,
                                                     total_steps=10 * config.num_epochs))
  n = config.batch_size
  batch = batches.place({"image": np.zeros((n, 32, 32, 3), np.float32),
                         "label": np.zeros(n, np.int32), "mask": np.ones(n, bool)}, steps.data)
  return steps.train.lower(state, batch).compile().as_text()


# What shows that the options arrive: YNNPACK's fusions, which older jaxlibs (Colab's) lack.
_YNN = (("xla_cpu_experimental_ynn_fusion_type", ""),)


@pytest.mark.skipif(xla_cpu._compile_error(_YNN) is not None,  # pylint: disable=protected-access
                    reason=f"jaxlib {jax.lib.__version__} has no YNNPACK fusions")
@pytest.mark.parametrize("options,ynn", [({"xla_cpu_experimental_ynn_fusion_type": ""}, False),
                                         ({}, True)])
def test_cpu_xla_options_reach_the_compiled_train_step(options, ynn):
  hlo = _compiled_train_step(_smoke(**{"cpu.xla_options": options}))
  assert ("__ynn_fusion" in hlo) == ynn  # jaxlib's default fuses the classifier's dot


def test_a_cpu_default_that_this_jaxlib_lacks_is_skipped_with_one_warning(monkeypatch, caplog):
  """Older jaxlibs (Colab's) lack some of config.cpu's options: the project's own defaults
  are then left out with a warning; the same option set by a user still stops the run."""
  lacking = {"xla_cpu_option_of_a_later_jaxlib": "1"}
  defaults = xla_cpu.default_config()
  usable = xla_cpu.compiler_options(_smoke(), "float32")  # the defaults this jaxlib has
  monkeypatch.setattr(xla_cpu, "default_config", lambda: ml_collections.ConfigDict(
      {**defaults.to_dict(), "xla_options": {**defaults.xla_options, **lacking}}))
  xla_cpu._usable.cache_clear()  # pylint: disable=protected-access
  xla_cpu._warn_lacking.cache_clear()  # pylint: disable=protected-access
  config = _smoke(**{"cpu.xla_options": {**defaults.xla_options, **lacking}})
  with caplog.at_level(logging.WARNING):
    assert xla_cpu.compiler_options(config, "float32") == usable
    xla_cpu.compiler_options(config, "float32")
    config_validation.validate(config)
  skipped = [r for r in caplog.records if "xla_cpu_option_of_a_later_jaxlib" in r.getMessage()]
  assert len(skipped) == 1 and "compiling without it" in skipped[0].getMessage()
  config = _smoke(**{"cpu.xla_options": {"xla_cpu_option_of_a_later_jaxlib": "2"}})  # a user's
  with pytest.raises(config_validation.ConfigError, match=r"xla_cpu_option_of_a_later_jaxlib"):
    config_validation.validate(config)


def test_an_unusable_compilation_cache_warns_and_compiling_goes_on(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  script = textwrap.dedent(f"""
      import jax, jax.numpy as jnp
      from resnet_jax import main
      main.enable_compilation_cache({str(blocker / "cache")!r})
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
      print("OK", float(jax.jit(lambda x: (x * 2).sum())(jnp.ones(4))))
      """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "OK 8.0" in result.stdout
  assert str(blocker) in result.stderr  # the warning names the path it could not use


def test_a_dataset_of_another_image_size_trains_evaluates_and_predicts(tmp_path, monkeypatch):
  """The image's geometry comes from the dataset record alone: a 16x16 dataset's synthetic
  images, crops, translation, test-time shifts, model initialisation and predict's input
  all follow it."""
  from resnet_jax import evaluate  # pylint: disable=g-import-not-at-top
  from resnet_jax.data import datasets, sources  # pylint: disable=g-import-not-at-top
  small = dataclasses.replace(datasets.DATASETS["cifar10"], image_shape=(16, 16, 3))
  monkeypatch.setitem(datasets.DATASETS, "small16", small)
  config = _smoke(**{"data.dataset": "small16", "num_epochs": 1, "eval.tta": 2,
                     "data.augment.crop_padding": 2, "data.augment.translate": 0.1})
  shapes = set()
  on_train_batches(monkeypatch, lambda n, batch: shapes.add(batch["image"].shape[1:]) or batch)
  state, history = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert shapes == {(16, 16, 3)}  # after the crop and translation
  # The shifted views of TTA level 2 at 16x16: --mode eval's result is the loop's.
  metrics = evaluate.evaluate_checkpoint(config, str(tmp_path / "run"))
  assert metrics["tta"] == 2
  assert metrics["accuracy"] == pytest.approx(history[-1]["eval_tta_accuracy"], abs=1e-9)
  images, _ = sources.load_split(config.data, "test[:8]")
  assert images.shape == (8, 16, 16, 3)
  with open(tmp_path / "in.pkl", "wb") as f:
    pickle.dump({b"data": images.transpose(0, 3, 1, 2).reshape(8, 16 * 16 * 3)}, f)  # rows
  result = evaluate.predict(config, str(tmp_path / "run"), str(tmp_path / "in.pkl"),
                            str(tmp_path / "p.csv"))
  assert result["count"] == 8
