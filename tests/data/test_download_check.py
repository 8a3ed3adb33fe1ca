"""The reproduction helpers: `stages.download --check` and the weight prefetch for offline clusters."""
import stages.download as download
from pipeline.presets import preset_params, render_params
from stages.common import run


def test_download_check_lists_present_missing_and_sizes_without_downloading(tmp_path, capsys):
    (tmp_path / "ADEChallengeData2016/images/validation").mkdir(parents=True)
    (tmp_path / "params.yaml").write_text(render_params("paper"))
    result = run(download.main, download.build_parser(), [
        "--check", "--manifest", str(tmp_path / "datasets.json"), "--params", str(tmp_path / "params.yaml"),
        "--root", str(tmp_path),
        "--datasets", "coco", "ade20k", "mapillary_vistas"])
    rows = {r["dataset"]: r for r in result["check"]}
    assert rows["ade20k"]["status"] == "partial" and rows["coco"]["status"] == "missing"
    assert rows["mapillary_vistas"]["licence_gated"] and rows["mapillary_vistas"]["action"]
    assert result["check"][0]["dataset"] == "mapillary_vistas"  # licence-gated first
    assert rows["coco"]["download_GB"] > 10
    out = capsys.readouterr().out
    assert "mapillary_vistas (do this first)" in out and "still needed" in out
    assert not (tmp_path / "downloads").exists() and not (tmp_path / "coco").exists()  # nothing fetched
    assert not (tmp_path / "datasets.json").exists()  # nor any manifest written


def test_prefetch_builds_each_hub_backbone_once(monkeypatch):
    import models.clip_backbone as cb
    import models.generators as gens
    from pipeline.scripts.prefetch_weights import prefetch

    calls = []
    monkeypatch.setattr(cb, "build_clip", lambda model, pretrained: calls.append(("clip", model, pretrained)))
    monkeypatch.setattr(gens, "build_mask2former", lambda name: calls.append(("m2f", name)))
    done = prefetch(preset_params("paper"))
    assert calls == [("clip", "ViT-L-14-336-quickgelu", "openai"),
                     ("m2f", "facebook/mask2former-swin-base-coco-panoptic")] and len(done) == 2
    calls.clear()
    assert prefetch(preset_params("toy")) == [] and calls == []  # the toy preset needs none
