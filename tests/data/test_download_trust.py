"""Dataset sources (issue 29, class 5): every URL is https, and `stages.download --check` says, per source, how its
download is verified: a published sha256, or trust on first use (TOFU) with the lock file that records it."""
import json

import pytest

import stages.download as download_stage
from pipeline.data.download import LOCK_FILE
from pipeline.data.prepare import DATASETS
from pipeline.presets import render_params
from stages.common import run


def test_no_dataset_source_uses_plain_http():
    urls = [s.url for spec in DATASETS.values() for s in spec.sources]
    assert urls and [u for u in urls if not u.startswith("https://")] == []
    assert not [spec.name for spec in DATASETS.values() if "http://" in spec.manual]


def _check(tmp_path, datasets, monkeypatch, pinned=None):
    from pipeline.data import prepare

    if pinned is not None:
        monkeypatch.setattr(prepare, "pinned_checksums", lambda: pinned)
    (tmp_path / "params.yaml").write_text(render_params("paper"))
    return run(download_stage.main, download_stage.build_parser(), [
        "--check", "--manifest", str(tmp_path / "datasets.json"), "--params", str(tmp_path / "params.yaml"),
        "--root", str(tmp_path), "--datasets", *datasets])


def _line(out: str, file: str) -> str:
    lines = [ln for ln in out.splitlines() if ln.strip().startswith(file)]
    assert lines, f"--check says nothing about {file}:\n{out}"
    return lines[0]


def test_check_states_tofu_for_every_unpinned_source(tmp_path, capsys, monkeypatch):
    """A source not downloaded yet, and one downloaded (its sha256 recorded in the lock file): both are named with
    TOFU and where the hash is recorded."""
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads/ADEChallengeData2016.zip").write_bytes(b"zip")
    sha = "ab" * 32
    (tmp_path / LOCK_FILE).write_text(json.dumps({"files": {"ADEChallengeData2016.zip": {
        "sha256": sha, "size": 3, "url": "https://data.csail.mit.edu/x.zip"}}}))
    result = _check(tmp_path, ["ade20k"], monkeypatch)
    out = capsys.readouterr().out
    lock = str(tmp_path / LOCK_FILE)
    assert lock in out
    recorded, pending = _line(out, "ADEChallengeData2016.zip"), _line(out, "ade20k_annotations_instance.tar")
    assert "TOFU" in recorded and sha[:12] in recorded and "recorded" in recorded
    assert "TOFU" in pending and "first download" in pending and "trusted" in pending
    trust = {t["file"]: t for t in result["check"][0]["trust"]}
    assert trust["ADEChallengeData2016.zip"]["verified_by"] == "tofu-recorded"
    assert trust["ade20k_annotations_instance.tar"]["verified_by"] == "tofu-first-download"


def test_check_says_when_a_source_is_pinned(tmp_path, capsys, monkeypatch):
    pinned = {"VOCtrainval_2010.tar": "cd" * 32}
    result = _check(tmp_path, ["pascal_context"], monkeypatch, pinned=pinned)
    line = _line(capsys.readouterr().out, "VOCtrainval_2010.tar")
    assert "TOFU" not in line and "published sha256" in line
    assert result["check"][0]["trust"][0]["verified_by"] == "published sha256"


@pytest.mark.parametrize("datasets", [["coco", "coco_stuff"]])
def test_a_source_shared_by_two_datasets_is_listed_once(tmp_path, capsys, monkeypatch, datasets):
    _check(tmp_path, datasets, monkeypatch)
    out = capsys.readouterr().out
    assert sum(ln.strip().startswith("coco_train2017.zip") for ln in out.splitlines()) == 1
