"""`fovseg evaluate` refuses inconsistent inputs with one line (file, JSON path, image id, segment id), never a
PQ and never a traceback: panopticapi's own checks (a)-(g), a COCO-panoptic schema, images listed twice, zero
images; the semantic mode takes vocabulary names (packaged and toy) or files."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.data.formats import id_to_rgb

REPO = Path(__file__).resolve().parents[2]
COCO_SAMPLE = REPO / "tests" / "fixtures" / "coco_panoptic_sample"
CATS = [{"id": 11, "name": "thing", "isthing": 1}, {"id": 22, "name": "stuff", "isthing": 0}]


def _map(ids=(1, 2)) -> np.ndarray:
    m = np.zeros((10, 10), np.uint32)
    m[:, :5], m[:, 5:] = ids
    return m


def _case(root: Path, gt_map=None, pred_map=None, gt_anns=None, pred_anns=None, cats=CATS) -> list[str]:
    """gt/pred folders with img.png and the two jsons; annotations default to a perfect prediction of image 1."""
    gt_map = _map() if gt_map is None else gt_map
    pred_map = _map() if pred_map is None else pred_map
    for name, m in (("gt", gt_map), ("pred", pred_map)):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(id_to_rgb(m)).save(root / name / "img.png")
    default = [{"image_id": 1, "file_name": "img.png",
                "segments_info": [{"id": 1, "category_id": 11}, {"id": 2, "category_id": 22}]}]
    gt = {"annotations": default if gt_anns is None else gt_anns, "categories": cats}
    _dump(root / "gt.json", gt)
    _dump(root / "pred.json", {"annotations": default if pred_anns is None else pred_anns})
    return ["--gt_json_file", str(root / "gt.json"), "--pred_json_file", str(root / "pred.json")]


def _dump(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


def _ann(image_id=1, file_name="img.png", segs=((1, 11), (2, 22))) -> dict:
    return {"image_id": image_id, "file_name": file_name,
            "segments_info": [{"id": i, "category_id": c} for i, c in segs]}


def _error(argv: list[str], capsys) -> str:
    """Run `fovseg evaluate`, expect exit 1 and exactly one line on stderr; return it."""
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", *argv, "--workers", "1"])
    assert exc.value.code == 1
    captured = capsys.readouterr()
    assert "PQ" not in captured.out and "mIoU" not in captured.out  # no score printed
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err


def test_a_consistent_case_scores_100(tmp_path, capsys):
    flags = _case(tmp_path)
    out = tmp_path / "s.json"
    cli_main(["evaluate", *flags, "--json", str(out), "--workers", "1"])
    assert json.loads(out.read_text())["PQ"] == pytest.approx(100)


def test_real_coco_ground_truth_passes_every_check(tmp_path):
    gt = COCO_SAMPLE / "panoptic.json"
    out = tmp_path / "s.json"
    cli_main(["evaluate", "--gt-json-file", str(gt), "--pred-json-file", str(gt), "--gt-folder",
              str(COCO_SAMPLE / "panoptic"), "--pred-folder", str(COCO_SAMPLE / "panoptic"), "--json", str(out),
              "--workers", "1"])
    s = json.loads(out.read_text())
    assert s["PQ"] == pytest.approx(100) and s["images"] == 2


# ----------------------------------------------------------------------------- panopticapi's checks (a)-(g)
def test_a_prediction_for_an_image_not_in_the_ground_truth(tmp_path, capsys):
    err = _error(_case(tmp_path, pred_anns=[_ann(), _ann(7, "other.png")]), capsys)
    assert "pred.json" in err and "image_id 7" in err and "not in the ground truth" in err


def test_b_ground_truth_image_without_prediction(tmp_path, capsys):
    err = _error(_case(tmp_path, gt_anns=[_ann(), _ann(2, "two.png")]), capsys)
    assert "pred.json has no prediction for image_id 2" in err and "two.png" in err


@pytest.mark.parametrize("side", ["gt", "pred"])
def test_c_duplicated_segment_id_in_segments_info(side, tmp_path, capsys):
    dup = [_ann(segs=((1, 11), (2, 22), (2, 22)))]
    err = _error(_case(tmp_path, **{f"{side}_anns": dup}), capsys)
    assert f"{side}.json" in err and "image_id 1" in err and "segment id 2 twice" in err


@pytest.mark.parametrize("side", ["gt", "pred"])
def test_d_png_id_not_in_segments_info(side, tmp_path, capsys):
    m = _map()
    m[0, 0] = 9
    err = _error(_case(tmp_path, **{f"{side}_map": m}), capsys)
    assert f"{side}/img.png" in err and "segment id 9" in err and "image_id 1" in err
    assert "without segments_info" in err


@pytest.mark.parametrize("side", ["gt", "pred"])
def test_e_segments_info_id_absent_from_the_png(side, tmp_path, capsys):
    extra = [_ann(segs=((1, 11), (2, 22), (5, 11)))]
    err = _error(_case(tmp_path, **{f"{side}_anns": extra}), capsys)
    assert f"{side}.json" in err and "image_id 1" in err and "segment id 5" in err and f"{side}/img.png" in err


@pytest.mark.parametrize("side", ["gt", "pred"])
def test_f_unknown_category_id(side, tmp_path, capsys):
    err = _error(_case(tmp_path, **{f"{side}_anns": [_ann(segs=((1, 11), (2, 99)))]}), capsys)
    assert f"{side}.json" in err and "image_id 1" in err and "segment id 2" in err and "category_id 99" in err


def test_g_png_sizes_differ(tmp_path, capsys):
    err = _error(_case(tmp_path, pred_map=np.pad(_map(), ((0, 2), (0, 0)), mode="edge")), capsys)
    assert "pred/img.png is 10x12" in err and "gt/img.png is 10x10" in err and "image_id 1" in err


# ----------------------------------------------------------------------------- images twice, zero images
@pytest.mark.parametrize("side", ["gt", "pred"])
def test_an_image_listed_twice(side, tmp_path, capsys):
    err = _error(_case(tmp_path, **{f"{side}_anns": [_ann(), _ann(file_name="copy.png")]}), capsys)
    assert f"{side}.json" in err and "image_id 1 is listed twice" in err


def test_one_png_listed_for_two_images(tmp_path, capsys):
    err = _error(_case(tmp_path, gt_anns=[_ann(), _ann(2)]), capsys)
    assert "gt.json" in err and "file_name 'img.png' is listed twice" in err


def test_gt_images_list_with_an_image_twice(tmp_path, capsys):
    flags = _case(tmp_path)
    gt = json.loads((tmp_path / "gt.json").read_text())
    gt["images"] = [{"id": 1, "file_name": "img.jpg"}, {"id": 1, "file_name": "img.jpg"}]
    _dump(tmp_path / "gt.json", gt)
    assert "gt.json: image id 1 is listed twice in 'images'" in _error(flags, capsys)


def test_zero_images_is_an_error_not_a_score(tmp_path, capsys):
    err = _error(_case(tmp_path, gt_anns=[], pred_anns=[]), capsys)
    assert "gt.json lists 0 images" in err


def test_duplicated_category_id(tmp_path, capsys):
    err = _error(_case(tmp_path, cats=[*CATS, {"id": 11, "name": "again"}]), capsys)
    assert "category id 11 is listed twice in 'categories'" in err


# ----------------------------------------------------------------------------- schema: one line, JSON path
def _edit(obj: dict, path: str, value) -> dict:
    """Set (or, for value ..., delete) the item at a dotted path with [k] indices."""
    import re

    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    target = obj
    for k in keys[:-1]:
        target = target[k]
    if value is ...:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return obj


@pytest.mark.parametrize("side, path, value, expected", [
    ("pred", "annotations", {"image_id": 1}, "annotations: Input should be a valid list"),
    ("pred", "annotations[0].segments_info[1].id", "2", "annotations[0].segments_info[1].id: Input should be a "
                                                       "valid integer, got '2'"),
    ("pred", "annotations[0].segments_info[1].id", 2.0, "annotations[0].segments_info[1].id"),
    ("pred", "annotations[0].segments_info[0].id", 0, "annotations[0].segments_info[0].id: Input should be greater"),
    ("pred", "annotations[0].segments_info[0].category_id", ..., "annotations[0].segments_info[0].category_id: "
                                                                 "missing key"),
    ("pred", "annotations[0].file_name", ..., "annotations[0].file_name: missing key"),
    ("pred", "annotations[0].image_id", [1], "annotations[0].image_id: expected an integer or a string"),
    ("pred", "annotations[0].image_id", True, "annotations[0].image_id: expected an integer or a string"),
    ("pred", "annotations[0].segments_info", None, "annotations[0].segments_info: Input should be a valid list"),
    ("pred", "annotations[0]", "img.png", "annotations[0]: Input should be a valid dictionary"),
    ("gt", "categories", ..., "categories: missing key"),
    ("gt", "categories", [], "categories: List should have at least 1 item"),
    ("gt", "categories[1].isthing", 2, "categories[1].isthing: expected 0 or 1"),
    ("gt", "annotations[0].segments_info[0].iscrowd", "no", "annotations[0].segments_info[0].iscrowd"),
    ("gt", "annotations[0].segments_info[0].area", -3, "annotations[0].segments_info[0].area"),
])
def test_malformed_json_is_one_line_with_the_json_path(side, path, value, expected, tmp_path, capsys):
    flags = _case(tmp_path)
    file = tmp_path / f"{side}.json"
    _dump(file, _edit(json.loads(file.read_text()), path, value))
    err = _error(flags, capsys)
    assert f"{file}: {expected}" in err


@pytest.mark.parametrize("content, expected", [
    ("[1, 2]", "(top level): Input should be a valid dictionary"),
    ("{}", "annotations: missing key"),
    ('{"annotations": [1, {"image_id": 1}]}', "annotations[0]: Input should be a valid dictionary"),
    ("not json", "is not valid json"),
])
def test_prediction_file_that_is_not_coco_panoptic(content, expected, tmp_path, capsys):
    flags = _case(tmp_path)
    (tmp_path / "pred.json").write_text(content)
    assert expected in _error(flags, capsys)


def test_several_problems_are_counted_in_the_one_line(tmp_path, capsys):
    flags = _case(tmp_path, pred_anns=[{"image_id": 1}])
    err = _error(flags, capsys)
    assert "annotations[0].file_name: missing key (and 1 more problem(s))" in err


def test_json_that_is_not_utf8_text(tmp_path, capsys):
    flags = _case(tmp_path)
    (tmp_path / "pred.json").write_bytes(b"\xff\xfe\x00garbage")
    assert "pred.json is not valid json" in _error(flags, capsys)


def test_a_decompression_bomb_png_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    monkeypatch.delenv("FOVSEG_MAX_IMAGE_PIXELS", raising=False)
    err = _error(_case(tmp_path), capsys)  # 100 pixels: over the limit (a warning in Pillow) is refused too
    assert "img.png is too large to open safely" in err


# ----------------------------------------------------------------------------- flags
def test_kebab_case_flags_and_underscore_aliases_agree(tmp_path):
    _case(tmp_path)
    outs = []
    for style in ("-", "_"):
        out = tmp_path / f"s{style}.json"
        cli_main(["evaluate", f"--gt{style}json{style}file", str(tmp_path / "gt.json"),
                  f"--pred{style}json{style}file", str(tmp_path / "pred.json"), f"--gt{style}folder",
                  str(tmp_path / "gt"), f"--pred{style}folder", str(tmp_path / "pred"), "--json", str(out),
                  "--workers", "1"])
        outs.append(json.loads(out.read_text()))
    assert outs[0] == outs[1] and outs[0]["PQ"] == pytest.approx(100)


def test_help_groups_the_flags_by_mode():
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", "-h"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout[res.stdout.index("panoptic mode"):]  # the groups, after the usage line and description
    assert out.index("--gt-json-file JSON, --gt_json_file JSON") < out.index("folders (both modes)")
    assert out.index("semantic mode") < out.index("--vocab NAME|FILE") < out.index("--ignore-label K")
    assert "--pred-folder DIR, --pred_folder DIR" in out and "--per-class CSV" in out
    assert "toy_open" in out and "ade20k_150" in out


def test_semantic_flags_are_refused_in_panoptic_mode(tmp_path, capsys):
    err = _error([*_case(tmp_path), "--vocab", "ade20k_150"], capsys)
    assert "--vocab and --ignore-label are semantic-mode flags" in err


# ----------------------------------------------------------------------------- semantic mode
def _semantic(root: Path, gt, pred, name="a.png") -> list[str]:
    for d, arr in (("gt", gt), ("pred", pred)):
        (root / d).mkdir(exist_ok=True)
        Image.fromarray(np.array(arr, np.uint8)).save(root / d / name)
    return ["--gt-folder", str(root / "gt"), "--pred-folder", str(root / "pred")]


@pytest.mark.parametrize("name", ["toy_open", "toy_seen", "toy_all", "coco_panoptic", "ade20k_150"])
def test_semantic_vocabulary_by_name(name, tmp_path):
    from pipeline.data.toy import toy_vocabulary
    from pipeline.data.vocab import load_vocabulary

    n = len(toy_vocabulary(name) if name.startswith("toy") else load_vocabulary(name))
    flags = _semantic(tmp_path, [[0, 1], [1, n - 1]], [[0, 1], [1, n - 1]])
    out = tmp_path / "s.json"
    cli_main(["evaluate", *flags, "--vocab", name, "--json", str(out), "--workers", "1"])
    s = json.loads(out.read_text())
    assert s["mIoU"] == pytest.approx(100) and len(s["classes"]) == n


def test_unknown_vocabulary_name_lists_the_valid_ones(tmp_path, capsys):
    err = _error([*_semantic(tmp_path, [[0]], [[0]]), "--vocab", "toy_opn"], capsys)
    assert "--vocab toy_opn: no such vocabulary or file" in err
    for valid in ("ade20k_150", "coco_panoptic", "toy_open", "toy_seen", "toy_all"):
        assert valid in err


@pytest.mark.parametrize("content", ["[1, 2, 3]", '{"a": 1}', "[]", "nope"])
def test_vocabulary_file_that_is_not_a_class_list(content, tmp_path, capsys):
    vocab = tmp_path / "v.json"
    vocab.write_text(content)
    err = _error([*_semantic(tmp_path, [[0]], [[0]]), "--vocab", str(vocab)], capsys)
    assert "v.json" in err or "vocabulary" in err


def test_semantic_image_listed_twice(tmp_path, capsys):
    flags = _semantic(tmp_path, [[0]], [[0]])
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "pred" / "a.tif")
    err = _error([*flags, "--vocab", "toy_open"], capsys)
    assert "--pred-folder" in err and "image 'a' is listed twice (a.png and a.tif)" in err


def test_semantic_zero_images(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    err = _error(["--gt-folder", str(tmp_path / "gt"), "--pred-folder", str(tmp_path / "pred"), "--vocab",
                  "toy_open"], capsys)
    assert "0 images" in err


def test_an_inconsistent_image_is_reported_from_a_worker_process(tmp_path, capsys):
    from pipeline.scripts.bench_metrics import write_panoptic_folders

    f = write_panoptic_folders(tmp_path, 8)
    pred = json.loads(f["pred_json"].read_text())
    dropped = pred["annotations"][5]["segments_info"].pop()  # its pixels stay in the PNG
    _dump(f["pred_json"], pred)
    with pytest.raises(SystemExit):
        cli_main(["evaluate", "--gt-json-file", str(f["gt_json"]), "--pred-json-file", str(f["pred_json"]),
                  "--gt-folder", str(f["gt_folder"]), "--pred-folder", str(f["pred_folder"]), "--workers", "2"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"segment id {dropped['id']} is in the PNG without segments_info" in err
    assert "000005.png" in err and "image_id 5" in err
