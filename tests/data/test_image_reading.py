"""Fault-campaign image defects (issue 10, item 8.4): 16-bit PNGs, EXIF orientation, decompression bombs,
and the predict command's argument checks."""
import numpy as np
import pytest
from PIL import Image

from pipeline.data.formats import DatasetError, read_image


def test_16bit_grayscale_png_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    img = read_image(path)
    assert img.dtype == np.uint8 and img.shape == (32, 64, 3)
    assert img[0, 0, 0] == 0 and img[-1, -1, 0] == 255
    assert abs(int(img[16, 0, 0]) - round(ramp[16, 0] / 257)) <= 1  # proportional, not clipped
    assert (img == 255).mean() < 0.01


def test_32bit_integer_image_with_16bit_values_is_scaled(tmp_path):
    arr = np.full((8, 8), 32896, np.int32)  # 128 * 257
    path = tmp_path / "i32.tif"
    Image.fromarray(arr, mode="I").save(path)
    assert int(read_image(path)[0, 0, 0]) == 128


def test_exif_orientation_is_applied(tmp_path):
    raw = np.zeros((20, 40, 3), np.uint8)
    raw[:, :20] = (255, 0, 0)  # left half red in the stored pixels
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    Image.fromarray(raw).save(path, exif=exif.tobytes(), quality=95)
    img = read_image(path)
    assert img.shape == (40, 20, 3)  # displayed upright: portrait
    assert img[2, 10, 0] > 200 and img[-3, 10, 0] < 60  # stored left half is now the top


def test_decompression_bomb_is_a_clear_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.delenv("FOVSEG_MAX_IMAGE_PIXELS", raising=False)
    path = tmp_path / "huge.png"
    Image.new("L", (100, 100)).save(path)  # 10000 pixels > 2 x the limit: Pillow refuses it as a bomb
    with pytest.raises(DatasetError, match=r"huge.png.*10000 pixels.*FOVSEG_MAX_IMAGE_PIXELS"):
        read_image(path)


def test_the_pixel_limit_can_be_raised_by_env(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("FOVSEG_MAX_IMAGE_PIXELS", "20000")
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    assert read_image(path).shape == (100, 100, 3)


def test_bad_pixel_limit_env_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FOVSEG_MAX_IMAGE_PIXELS", "lots")
    path = tmp_path / "a.png"
    Image.new("L", (4, 4)).save(path)
    with pytest.raises(DatasetError, match=r"FOVSEG_MAX_IMAGE_PIXELS.*'lots'"):
        read_image(path)


@pytest.mark.parametrize("value", ["-1", "5", "nan", "abc"])
def test_predict_refuses_a_threshold_outside_0_1(value, tmp_path, capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path / "x.png"), "--classes", "a", "--threshold", value])
    assert exc.value.code == 2
    assert "--threshold" in capsys.readouterr().err


def test_predict_refuses_an_unwritable_out_before_inference(tmp_path, capsys, monkeypatch):
    from pipeline import cli

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", str(tmp_path / "x.png"), "--classes", "a", "--out", str(blocker / "pred")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--out" in err and "a_file" in err
