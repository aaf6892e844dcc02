"""scripts/plot_time_to_accuracy.py: a run on a machine the figure has no panel for."""

import json

import pytest

from tests.conftest import load_script


def test_a_run_on_a_machine_without_a_panel_is_named(tmp_path, monkeypatch):
  """It would be listed in the table and missing from the figure."""
  (tmp_path / "h.json").write_text(json.dumps([{"elapsed_s": 60, "eval_accuracy": 0.5}]))
  index = tmp_path / "index.json"
  index.write_text(json.dumps({"runs": [{"recipe": "fast", "machine": "tpu", "when": "today",
                                         "history": "h.json", "command": "c", "note": ""}]}))
  script = load_script("plot_time_to_accuracy")
  monkeypatch.setattr("sys.argv", ["plot_time_to_accuracy.py", "--index", str(index),
                                   "--out", str(tmp_path / "figure.png")])
  with pytest.raises(SystemExit, match=r"index.json: machine 'tpu' is not one of \['cpu', "
                                       r"'h200'\]; add it to MACHINES"):
    script.main()
  assert not (tmp_path / "figure.png").exists()
