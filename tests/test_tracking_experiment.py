"""tracking.experiment must be a visible one-line MLflow experiment name: "" (which used to turn tracking off
silently), blanks, newlines/tabs and surrounding spaces are refused with one line naming the key and the file."""
from pathlib import Path

import pytest
import yaml

from pipeline.config import to_dict
from pipeline.errors import ParamsError
from pipeline.params_file import load_params, params_from_dict

REPO = Path(__file__).resolve().parents[1]


def _with_experiment(value):
    data = to_dict(load_params(REPO / "params.yaml"))
    data["tracking"]["experiment"] = value
    return data


@pytest.mark.parametrize("value, message", [
    ("", "tracking.experiment: String should have at least 1 character"),
    ("   ", "tracking.experiment: '   ' is blank"),
    ("fovseg\ntoy", r"tracking.experiment: 'fovseg\ntoy' contains the control character '\n'"),
    ("fovseg\ttoy", r"contains the control character '\t'"),
    ("fovseg-toy\r", r"contains the control character '\r'"),
    (" fovseg-toy", "has leading or trailing spaces; write 'fovseg-toy'"),
])
def test_bad_experiment_names_are_refused(value, message):
    with pytest.raises(ParamsError) as exc:
        params_from_dict(_with_experiment(value), "params.yaml")
    assert message in str(exc.value) and str(exc.value).startswith("params.yaml: ")


@pytest.mark.parametrize("value", ["fovseg-toy", "my runs / paper", "Ablation (Table IV)", "ünïcode"])
def test_good_experiment_names_pass(value):
    assert params_from_dict(_with_experiment(value), "params.yaml").tracking.experiment == value


def test_a_params_file_with_a_newline_in_the_experiment_is_one_clear_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_with_experiment("two\nlines")))
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    assert str(exc.value).startswith(f"{path}: tracking.experiment:") and "\n" not in str(exc.value)
