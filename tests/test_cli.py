import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_predict_on_a_folder_writes_panoptic_semantic_overlay_and_rle(tiny_backbones, toy_root, tmp_path,
                                                                        monkeypatch):
    from pycocotools import mask as mask_utils

    from pipeline.data.formats import read_panoptic_png

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((toy_root / "toy/images/open").glob("*.png"))[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    main(["predict", str(folder), "--classes", "red circle, blue square", "--stuff", "grass, sky", "--params",
          str(REPO / "params.yaml"), "--backbones", str(tiny_backbones), "--zero-shot", "--threshold", "0.0",
          "--out", "pred", "--quiet"])
    stems = sorted(p.stem for p in folder.iterdir())
    for stem in stems:
        result = json.loads((tmp_path / "pred" / f"{stem}_segments.json").read_text())
        ids = read_panoptic_png(tmp_path / "pred" / f"{stem}_panoptic.png")
        assert {s["id"] for s in result["segments_info"]} == set(np.unique(ids)) - {0}
        for s in result["segments_info"]:
            decoded = mask_utils.decode({"size": s["segmentation"]["size"],
                                         "counts": s["segmentation"]["counts"].encode()})
            assert (decoded.astype(bool) == (ids == s["id"])).all() and s["area"] == int(decoded.sum())
            assert s["label"] in ["red circle", "blue square", "grass", "sky"]
        stuff = [s["label"] for s in result["segments_info"] if not s["isthing"]]
        assert len(stuff) == len(set(stuff))  # one merged segment per stuff class
        semantic = np.asarray(Image.open(tmp_path / "pred" / f"{stem}_semantic.png"))
        assert semantic.shape == ids.shape and set(np.unique(semantic)) <= {0, 1, 2, 3, 255}
        overlay = Image.open(tmp_path / "pred" / f"{stem}_overlay.png")
        assert overlay.size[0] > 2 * ids.shape[1]  # upscaled image plus a legend panel
    pred = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [a["image_id"] for a in pred["annotations"]] == stems and len(pred["categories"]) == 4


def test_predict_with_a_packaged_vocabulary_and_a_glob(tiny_backbones, toy_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pattern = str(toy_root / "toy/images/open" / "*.png")
    from pipeline.eval.predict import expand_inputs, resolve_vocabulary

    assert len(expand_inputs([pattern])) > 1
    vocab = resolve_vocabulary(None, None, "ade20k_150")
    assert len(vocab) == 150 and not vocab.classes[0].isthing  # wall is stuff
    first = sorted((toy_root / "toy/images/open").glob("*.png"))[0]
    main(["predict", str(first), "--vocab", "ade20k_150", "--params", str(REPO / "params.yaml"), "--backbones",
          str(tiny_backbones), "--zero-shot", "--threshold", "0.0", "--out", "pred", "--quiet"])
    result = json.loads((tmp_path / "pred" / f"{first.stem}_segments.json").read_text())
    names = set(vocab.names)
    assert all(s["label"] in names for s in result["segments_info"])


@pytest.mark.parametrize("argv, message", [
    (["nope/*.png", "--classes", "a"], "matches no image"),
    (["missing.png", "--classes", "a"], "not found"),
    (["{img}", "--classes", "a", "--vocab", "ade20k_150"], "not both"),
    (["{img}", "--vocab", "nope"], "no such vocabulary or file"),
    (["{img}", "--classes", "a", "--threshold", "1.5"], "--threshold"),
    (["{img}"], "give the classes to look for"),
    (["{img}", "--classes", " , , "], "holds no class name"),
    (["{img}", "--stuff", "sky"], "give --classes too"),
    (["{img}", "--classes", "red circle, , blue square, Red Circle"],
     "'Red Circle' is given twice: --classes entry 1 ('red circle') and --classes entry 3"),
    (["{img}", "--classes", "red circle, sky", "--stuff", "grass, sky"],
     "--classes entry 2 ('sky') and --stuff entry 2"),
    (["{img}", "--classes", "@missing.txt"], "cannot read missing.txt"),
    (["{notimage}", "--classes", "a"], "is not an image Pillow can read"),
    (["{img}", "--classes", "a", "--out", "{notimage}/sub"], "is a file"),
])
def test_predict_bad_arguments_fail_with_one_clear_line(argv, message, toy_root, tmp_path, monkeypatch, capsys):
    """Each fails before any model is built, and leaves no output folder behind."""
    monkeypatch.chdir(tmp_path)
    img = str(sorted((toy_root / "toy/images/open").glob("*.png"))[0])
    (tmp_path / "notimage.png").write_text("not a picture")
    with pytest.raises(SystemExit):
        main(["predict", *[a.replace("{img}", img).replace("{notimage}", "notimage.png") for a in argv],
              "--params", str(REPO / "params.yaml")])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "predictions").exists()


def test_predict_class_lists_from_newlines_and_files(tmp_path):
    from pipeline.eval.predict import resolve_vocabulary

    listing = tmp_path / "classes.txt"
    listing.write_text("# my classes\nred circle\n\nblue square\n  \n")
    stuff = tmp_path / "stuff.txt"
    stuff.write_text("sky\ngrass\n")
    vocab = resolve_vocabulary(f"@{listing}", f"@{stuff}", None)
    assert vocab.names == ["red circle", "blue square", "sky", "grass"]
    assert [c.isthing for c in vocab.classes] == [True, True, False, False]
    assert resolve_vocabulary("red circle\nblue square, sky", None, None).names == ["red circle", "blue square", "sky"]


def test_predict_without_checkpoint_says_what_to_do(tiny_backbones, toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = next((toy_root / "toy/images/open").glob("*.png"))
    with pytest.raises(SystemExit):
        main(["predict", str(image), "--classes", "a, b", "--params", str(REPO / "params.yaml"), "--backbones",
              str(tiny_backbones), "--checkpoint", "nope.pt"])
    assert "dvc repro train" in capsys.readouterr().err


def test_preset_switch_round_trips(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    main(["preset", "paper", "--params", str(params)])
    assert "preset: paper" in params.read_text()
    main(["preset", "toy", "--params", str(params)])
    assert params.read_text() == (REPO / "params.yaml").read_text()


def test_preset_switch_never_loses_edits(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    edited = (REPO / "params.yaml").read_text().replace("iterations: 1000", "iterations: 1234")
    params.write_text(edited)
    with pytest.raises(SystemExit):
        main(["preset", "paper", "--params", str(params)])
    assert "--force" in capsys.readouterr().err and params.read_text() == edited  # refused, untouched
    main(["preset", "paper", "--params", str(params), "--force"])
    assert "preset: paper" in params.read_text()
    backups = list(tmp_path.glob("params.yaml.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == edited  # the edits are kept
    again = edited.replace("iterations: 1234", "iterations: 4321")  # a second --force in the same second
    params.write_text(again)
    main(["preset", "toy", "--params", str(params), "--force"])
    assert sorted(b.read_text() for b in tmp_path.glob("params.yaml.*bak")) == sorted([edited, again])


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_backbones, tmp_path_factory):
    from pipeline.build.classifier import build_classifier
    from pipeline.checkpoints import save_checkpoint
    from pipeline.params_file import load_params

    params = load_params(REPO / "params.yaml")
    model = build_classifier(params.backbones.clip, params.model, tiny_backbones, "cpu").model
    with torch.no_grad():  # a "trained" model that differs from the original CLIP
        model.visual.blocks[-1].attn.q_proj.weight.mul_(1.5)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint({"model": model.state_dict()}, path)
    return path


def test_attention_writes_original_vs_trained_maps(tiny_backbones, tiny_checkpoint, toy_root, tmp_path,
                                                   monkeypatch):
    from pipeline.data.formats import read_image
    from pipeline.eval.attention import attention_figure, load_models
    from pipeline.eval.predict import resolve_vocabulary
    from pipeline.params_file import load_params

    monkeypatch.chdir(tmp_path)
    image = sorted((toy_root / "toy/images/open").glob("*.png"))[0]
    main(["attention", str(image), "--classes", "sky, grass, red circle", "--params", str(REPO / "params.yaml"),
          "--backbones", str(tiny_backbones), "--checkpoint", str(tiny_checkpoint), "--out", "att"])
    out = tmp_path / "att" / f"{image.stem}_attention.png"
    assert out.stat().st_size > 5000
    params = load_params(REPO / "params.yaml")
    models = load_models(params, str(tiny_backbones), str(tiny_checkpoint),
                         resolve_vocabulary("sky, grass, red circle", None, None), torch.device("cpu"))
    from pipeline.build.classifier import classifier_input_size
    from pipeline.eval.attention import patch_class_maps

    img = read_image(image)
    size = classifier_input_size(*img.shape[:2], params.evaluate, models["trained"][0].image_size,
                                 models["trained"][0].visual.patch_size)
    maps = {k: patch_class_maps(m, t, img, size) for k, (m, t) in models.items()}
    assert maps["trained"].shape[0] == 3 and np.allclose(maps["trained"].sum(0), 1.0, atol=1e-4)
    assert not np.allclose(maps["trained"], maps["original CLIP"])  # the checkpoint changes the maps
    assert attention_figure(models, img, ["sky", "grass", "red circle"], params) is not None


def test_attention_stage_feeds_the_report(tiny_backbones, tiny_checkpoint, toy_root, tmp_path, monkeypatch):
    import yaml

    import stages.attention as attention
    from pipeline.report.figures import copy_attention
    from stages.common import run

    monkeypatch.chdir(tmp_path)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["root"] = str(toy_root)
    params["benchmark"]["attention_images"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run(attention.main, attention.build_parser(), ["--benchmark", "toy_open", "--backbones", str(tiny_backbones),
                                                   "--checkpoint", str(tiny_checkpoint), "--out", "att"])
    index = json.loads((tmp_path / "att" / "index.json").read_text())
    assert len(index["images"]) == 2 and all(item["classes"] for item in index["images"])
    figs = tmp_path / "figs"
    figs.mkdir()
    assert len(copy_attention(tmp_path / "att", figs)) == 2


@pytest.mark.parametrize("args", [["--help"], ["predict", "--help"], ["attention", "--help"], ["sweep", "--help"],
                                  ["predict", "x.png", "--threshold", "2"]])
def test_help_and_argument_errors_answer_without_importing_torch(args):
    """`fovseg ... --help` and bad arguments are answered before torch, the models or matplotlib load."""
    import subprocess
    import sys

    code = ("import sys\nfrom pipeline.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'matplotlib', 'open_clip', 'transformers') if m in sys.modules)\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    if "--threshold" in args:
        assert "must be in [0, 1], got 2" in out.stderr


def test_predict_says_why_an_image_got_no_segment(tiny_backbones, toy_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = next((toy_root / "toy/images/open").glob("*.png"))
    main(["predict", str(image), "--classes", "red circle", "--params", str(REPO / "params.yaml"), "--backbones",
          str(tiny_backbones), "--zero-shot", "--device", "cpu", "--threshold", "1.0", "--out", "out", "--quiet"])
    printed = capsys.readouterr().out
    assert "1 image(s), 0 segments" in printed
    assert "lower --threshold" in printed and "toy shapes world" in printed
    assert (tmp_path / "out" / f"{image.stem}_semantic.png").is_file()


# ----------------------------------------------------------------------------- --out with an earlier run
def _fake_segmenter(image):
    """One segment (the top half, class 0) per image: predict_images without a model."""
    h, w = image.shape[:2]
    id_map = np.zeros((h, w), np.int32)
    id_map[: h // 2] = 1
    return id_map, [{"id": 1, "label": 0, "score": 0.9}], np.where(id_map == 1, 0, -1), 1


def _no_model(monkeypatch):
    from pipeline.eval import predict

    def never(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(predict, "build_segmenter", never)


@pytest.mark.parametrize("marker", ["predictions.json", "old_panoptic.png"])
def test_predict_refuses_an_out_folder_that_holds_predictions(marker, toy_root, tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / marker).write_text("earlier run")
    img = str(sorted((toy_root / "toy/images/open").glob("*.png"))[0])
    with pytest.raises(SystemExit) as exc:
        main(["predict", img, "--classes", "a", "--out", "pred", "--params", str(REPO / "params.yaml")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out pred already holds predictions" in err and marker in err
    assert "--overwrite" in err and "another --out folder" in err
    assert (tmp_path / "pred" / marker).read_text() == "earlier run"  # untouched


def test_predict_overwrite_refuses_to_delete_its_own_inputs(toy_root, tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pred").mkdir()
    old = tmp_path / "pred" / "x_overlay.png"
    Image.new("RGB", (8, 8)).save(old)
    with pytest.raises(SystemExit):
        main(["predict", str(old), "--classes", "a", "--out", "pred", "--overwrite", "--params",
              str(REPO / "params.yaml")])
    assert "is an earlier prediction in --out pred" in capsys.readouterr().err and old.is_file()


def test_predict_images_overwrite_leaves_only_this_runs_files(toy_root, tmp_path):
    from pipeline.eval.predict import PredictError, predict_images, resolve_vocabulary

    images = sorted((toy_root / "toy/images/open").glob("*.png"))
    vocab = resolve_vocabulary("red circle", None, None)
    out = tmp_path / "pred"
    predict_images(_fake_segmenter, images[:3], vocab, out, progress=False)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PredictError, match="already holds predictions"):
        predict_images(_fake_segmenter, images[3:4], vocab, out, progress=False)
    predict_images(_fake_segmenter, images[3:4], vocab, out, progress=False, overwrite=True)
    stem = images[3].stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "predictions.json", *(f"{stem}{s}" for s in ("_panoptic.png", "_segments.json",
                                                                   "_semantic.png", "_overlay.png"))])
    pred = json.loads((out / "predictions.json").read_text())
    assert [a["file_name"] for a in pred["annotations"]] == [f"{stem}_panoptic.png"]


def test_predict_overwrite_replaces_an_earlier_run(tiny_backbones, toy_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = sorted((toy_root / "toy/images/open").glob("*.png"))
    common = ["--classes", "red circle, sky", "--params", str(REPO / "params.yaml"), "--backbones",
              str(tiny_backbones), "--zero-shot", "--threshold", "0.0", "--out", "pred", "--quiet"]
    main(["predict", str(images[0]), str(images[1]), *common])
    main(["predict", str(images[2]), *common, "--overwrite"])
    pred = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    listed = {a["file_name"] for a in pred["annotations"]}
    assert listed == {f"{images[2].stem}_panoptic.png"}
    assert {p.name for p in (tmp_path / "pred").glob("*_panoptic.png")} == listed  # the json matches the folder
