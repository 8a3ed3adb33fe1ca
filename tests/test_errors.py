"""One error family: every known failure derives from FovsegError and reaches the user as one line, exit 1."""
import logging

import pytest
from dvcyaml import REPO
from PIL import Image

from models.errors import FovsegError as ModelsFovsegError
from pipeline import errors
from stages.common import parser, run

KNOWN = [errors.ParamsError, errors.DatasetError, errors.DownloadError, errors.WeightsUnavailableError,
         errors.UnknownBenchmarkError, errors.VocabularyError, errors.CheckpointError, errors.TrainingDiverged,
         errors.TrainingInterrupted]


@pytest.mark.parametrize("exc", KNOWN, ids=lambda e: e.__name__)
def test_every_known_error_is_a_fovseg_error(exc):
    assert issubclass(exc, errors.FovsegError) and errors.FovsegError is ModelsFovsegError


@pytest.mark.parametrize("exc", KNOWN, ids=lambda e: e.__name__)
def test_stage_runner_turns_a_known_error_into_one_line(exc, caplog, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())

    def main(args, p):
        raise exc(f"something about {tmp_path / 'file'}; do this")

    with caplog.at_level(logging.ERROR, logger="fovseg"), pytest.raises(SystemExit) as stop:
        run(main, parser("test"), ["--params", str(params)])
    assert stop.value.code == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert lines == [f"something about {tmp_path / 'file'}; do this"] and not any(r.exc_info for r in caplog.records)


def test_a_bug_keeps_its_traceback(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())

    def main(args, p):
        raise ZeroDivisionError("a bug")

    with pytest.raises(ZeroDivisionError):
        run(main, parser("test"), ["--params", str(params)])


def test_unknown_benchmark_and_missing_weights_are_one_line_in_a_real_stage(tmp_path, monkeypatch, caplog, capsys):
    import stages.evaluate as evaluate
    from pipeline.cli import main as fovseg

    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.ERROR, logger="fovseg"), pytest.raises(SystemExit) as stop:
        run(evaluate.main, evaluate.build_parser(), ["--benchmark", "nope", "--backbones", "b", "--checkpoint", "c.pt",
                                                     "--proposals", "p", "--predictions", "e", "--metrics", "m.json",
                                                     "--timings", "t.json"])
    assert stop.value.code == 1
    assert [r.getMessage()[:26] for r in caplog.records if r.levelno >= logging.ERROR] == ["unknown benchmark 'nope'; "]
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        fovseg(["predict", "x.png", "--classes", "a", "--zero-shot", "--backbones", "missing"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 1 and len(err) == 1, err
    assert err[0].startswith("fovseg: error: Mask2Former folder missing/mask2former not found"), err


def test_a_permission_problem_anywhere_in_a_stage_is_one_line_saying_so(tmp_path, monkeypatch, caplog):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())

    def main(args, p):
        raise PermissionError(13, "Permission denied", "/data/coco/annotations")

    with caplog.at_level(logging.ERROR, logger="fovseg"), pytest.raises(SystemExit) as stop:
        run(main, parser("test"), ["--params", str(params)])
    assert stop.value.code == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("permission denied: /data/coco/annotations") and "not found" not in line
