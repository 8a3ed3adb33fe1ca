"""`fovseg evaluate`: prediction folders scored like panopticapi (panoptic) or a confusion matrix (semantic)."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.data.formats import id_to_rgb
from pipeline.scripts.bench_metrics import reference_pq_folders, write_panoptic_folders

CATS = [{"id": 11, "name": "thing", "isthing": 1}, {"id": 22, "name": "stuff", "isthing": 0}]


def _write_case(root, gt_map, gt_segs, pred_map, pred_segs):
    """One image as COCO-panoptic folders; segments use contiguous labels 0/1 -> category ids 11/22."""
    for name, m in (("gt", gt_map), ("pred", pred_map)):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(id_to_rgb(m)).save(root / name / "img.png")
    gt_info = [{"id": s["id"], "category_id": CATS[s["label"]]["id"], "iscrowd": s.get("iscrowd", 0),
                "area": int((gt_map == s["id"]).sum())} for s in gt_segs]
    pred_info = [{"id": s["id"], "category_id": CATS[s["label"]]["id"]} for s in pred_segs]
    (root / "gt.json").write_text(json.dumps({"annotations": [{"image_id": 1, "file_name": "img.png",
                                                               "segments_info": gt_info}], "categories": CATS}))
    (root / "pred.json").write_text(json.dumps({"annotations": [{"image_id": 1, "file_name": "img.png",
                                                                 "segments_info": pred_info}]}))
    return ["--gt_json_file", str(root / "gt.json"), "--pred_json_file", str(root / "pred.json")]


def _maps():
    gt = np.zeros((10, 10), np.uint32)
    gt[:, :5], gt[:, 5:] = 1, 2
    return gt, [{"id": 1, "label": 0, "iscrowd": 0}, {"id": 2, "label": 1, "iscrowd": 0}]


def _run(flags, tmp_path, capsys):
    out = tmp_path / "summary.json"
    cli_main(["evaluate", *flags, "--json", str(out), "--per-class", str(tmp_path / "per_class.csv"),
              "--workers", "1"])
    return json.loads(out.read_text()), capsys.readouterr().out


def test_one_missed_segment(tmp_path, capsys):
    gt, segs = _maps()
    flags = _write_case(tmp_path, gt, segs, np.where(gt == 1, 1, 0).astype(np.uint32), [{"id": 1, "label": 0}])
    s, printed = _run(flags, tmp_path, capsys)  # folders default to the json paths without .json
    assert s["PQ"] == pytest.approx(50, abs=1e-9) and s["PQ_th"] == pytest.approx(100) and s["PQ_st"] == 0
    assert "Things" in printed and "Stuff" in printed
    rows = list(csv.DictReader(open(tmp_path / "per_class.csv")))
    assert [r["name"] for r in rows] == ["thing", "stuff"] and rows[1]["FN"] == "1" and rows[0]["TP"] == "1"


def test_one_false_positive(tmp_path, capsys):
    gt, segs = _maps()
    pred = gt.copy()
    pred[0, :2] = 3
    flags = _write_case(tmp_path, gt, segs, pred, [{"id": 1, "label": 0}, {"id": 2, "label": 1},
                                                   {"id": 3, "label": 1}])
    s, _ = _run(flags, tmp_path, capsys)
    assert s["PQ"] == pytest.approx(100 * (0.96 + 1 / 1.5) / 2, abs=1e-9)


def test_crowd_overlap_is_not_a_false_positive(tmp_path, capsys):
    gt = np.zeros((10, 10), np.uint32)
    gt[:, :5] = 1
    pred = np.zeros((10, 10), np.uint32)
    pred[:, :6] = 7
    flags = _write_case(tmp_path, gt, [{"id": 1, "label": 0, "iscrowd": 1}], pred, [{"id": 7, "label": 0}])
    s, _ = _run(flags, tmp_path, capsys)
    assert s["n"] == 0 and s["PQ"] == 0


def test_random_folders_equal_the_reference_with_workers(tmp_path):
    f = write_panoptic_folders(tmp_path, 10)
    ref = reference_pq_folders(f["gt_json"], f["pred_json"], f["gt_folder"], f["pred_folder"])
    out = tmp_path / "s.json"
    cli_main(["evaluate", "--gt_json_file", str(f["gt_json"]), "--pred_json_file", str(f["pred_json"]),
              "--gt_folder", str(f["gt_folder"]), "--pred_folder", str(f["pred_folder"]), "--json", str(out),
              "--workers", "2"])
    s = json.loads(out.read_text())
    for name, sfx in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
        for m in ("pq", "sq", "rq"):
            assert s[f"{m.upper()}{sfx}"] == pytest.approx(ref[name][m], abs=1e-9)
    assert s["images"] == 10 and 0 < s["PQ"] < 100


def test_semantic_folder_known_case(tmp_path, capsys):
    for name, arr in (("gt", [[0, 0, 1, 1], [0, 0, 1, 255]]), ("pred", [[0, 0, 0, 1], [0, 0, 1, 1]])):
        (tmp_path / name).mkdir()
        Image.fromarray(np.array(arr, np.uint8)).save(tmp_path / name / "a.png")
    vocab = tmp_path / "v.json"
    vocab.write_text(json.dumps([{"id": i, "name": n} for i, n in enumerate(["road", "car", "sky"])]))
    s, printed = _run(["--gt_folder", str(tmp_path / "gt"), "--pred_folder", str(tmp_path / "pred"),
                       "--vocab", str(vocab)], tmp_path, capsys)
    assert s["mIoU"] == pytest.approx(100 * (0.8 + 2 / 3) / 2) and s["pACC"] == pytest.approx(100 * 6 / 7)
    assert "mIoU" in printed and s["ignore_label"] == 255
    rows = list(csv.DictReader(open(tmp_path / "per_class.csv")))
    assert rows[2]["name"] == "sky" and rows[2]["IoU"] == "" and float(rows[0]["IoU"]) == pytest.approx(80)


def test_semantic_packaged_vocab_and_16_bit_tif(tmp_path, capsys):
    gt = np.full((6, 6), 65535, np.uint16)
    gt[:3] = 846
    for name in ("gt", "pred"):
        (tmp_path / name).mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "x.tif")
    Image.fromarray(np.full((6, 6), 846, np.uint16)).save(tmp_path / "pred" / "x.tif")
    s, _ = _run(["--gt_folder", str(tmp_path / "gt"), "--pred_folder", str(tmp_path / "pred"),
                 "--vocab", "ade20k_847"], tmp_path, capsys)
    assert s["mIoU"] == pytest.approx(100) and s["ignore_label"] == 65535 and len(s["classes"]) == 847


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        cli_main(["evaluate", *argv])
    assert exc.value.code == 1
    return capsys.readouterr().err


def test_image_in_json_but_not_in_folder(tmp_path, capsys):
    gt, segs = _maps()
    flags = _write_case(tmp_path, gt, segs, gt.copy(), [{"id": 1, "label": 0}, {"id": 2, "label": 1}])
    (tmp_path / "pred" / "img.png").unlink()
    err = _error(flags, capsys)
    assert "not in the folders" in err and "pred/img.png" in err


def test_missing_prediction_and_unknown_category(tmp_path, capsys):
    gt, segs = _maps()
    flags = _write_case(tmp_path, gt, segs, gt.copy(), [{"id": 1, "label": 0}, {"id": 2, "label": 1}])
    pred = json.loads((tmp_path / "pred.json").read_text())
    pred["annotations"][0]["segments_info"][0]["category_id"] = 99
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    assert "category_id 99" in _error(flags, capsys)
    (tmp_path / "pred.json").write_text(json.dumps({"annotations": []}))
    assert "no prediction for image_id 1" in _error(flags, capsys)
    assert "missing file" in _error(["--gt_json_file", str(tmp_path / "nope.json"), "--pred_json_file",
                                     str(tmp_path / "pred.json")], capsys)


def test_prediction_id_without_segments_info_names_the_file(tmp_path, capsys):
    gt, segs = _maps()
    flags = _write_case(tmp_path, gt, segs, gt.copy(), [{"id": 1, "label": 0}])
    err = _error(flags, capsys)
    assert "pred/img.png" in err and "without segments_info" in err


def test_semantic_missing_prediction_and_no_mode(tmp_path, capsys):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "gt" / "a.png")
    err = _error(["--gt_folder", str(tmp_path / "gt"), "--pred_folder", str(tmp_path / "pred"),
                  "--vocab", "ade20k_150"], capsys)
    assert "a.png" in err and "no prediction" in err
    assert "--vocab" in _error(["--gt_folder", str(tmp_path / "gt")], capsys)


def test_evaluate_does_not_import_torch(tmp_path):
    gt, segs = _maps()
    flags = _write_case(tmp_path, gt, segs, gt.copy(), [{"id": 1, "label": 0}, {"id": 2, "label": 1}])
    code = ("import sys; from pipeline.cli import main; main(['evaluate', *sys.argv[1:]]); "
            "assert 'torch' not in sys.modules, 'evaluate imported torch'")
    res = subprocess.run([sys.executable, "-c", code, *flags], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "100.0" in res.stdout
