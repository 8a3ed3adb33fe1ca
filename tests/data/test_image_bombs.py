"""Decompression bombs: PNG and JPEG headers claiming huge sizes are refused from the header alone, with one line
naming the file, by every reader (read_image, panoptic PNGs, label maps) and by `fovseg predict` before any model
is built. Pillow's default limit (Image.MAX_IMAGE_PIXELS, ~89 Mpx) is used unless the test says otherwise."""
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from pipeline.data.formats import DatasetError, read_image, read_label_map, read_panoptic_png

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LIMIT = Image.MAX_IMAGE_PIXELS


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width`` x ``height`` (valid CRCs) with a tiny IDAT: a few hundred bytes on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def jpeg_header(path: Path, width: int, height: int) -> Path:
    """A small real JPEG whose SOF0 frame header is patched to claim ``width`` x ``height``."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)  # marker, length (2), precision (1), then H, W
    path.write_bytes(bytes(data))
    return path


SIZES = [(30000, 30000), (10000, 10000)]  # over twice the limit (Pillow's error); over the limit (its warning)


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    monkeypatch.delenv("FOVSEG_MAX_IMAGE_PIXELS", raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", DEFAULT_LIMIT)


@pytest.mark.parametrize("make", [png_header, jpeg_header])
@pytest.mark.parametrize("size", SIZES)
def test_read_image_refuses_a_header_claiming_a_huge_size(make, size, tmp_path):
    path = make(tmp_path / f"bomb.{'png' if make is png_header else 'jpg'}", *size)
    with pytest.MonkeyPatch.context() as unlimited:
        unlimited.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(path) as im:
            assert im.size == size  # the header really claims it
    with pytest.raises(DatasetError, match=rf"image {path} is too large to open safely.*{size[0] * size[1]} "
                                           r"pixels.*FOVSEG_MAX_IMAGE_PIXELS") as exc:
        read_image(path)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("reader", [read_panoptic_png, read_label_map])
def test_panoptic_and_label_readers_refuse_bombs(reader, tmp_path):
    path = png_header(tmp_path / "bomb.png", 10000, 10000)
    with pytest.raises(DatasetError, match=r"bomb.png is too large to open safely"):
        reader(path)


def test_raised_limit_lets_a_trusted_large_header_through_to_decoding(tmp_path, monkeypatch):
    monkeypatch.setenv("FOVSEG_MAX_IMAGE_PIXELS", str(200_000_000))
    path = png_header(tmp_path / "big.png", 10000, 10000)
    with pytest.raises(DatasetError, match="cannot decode image"):  # no longer a bomb: the tiny IDAT is truncated
        read_image(path)


def test_warnings_filters_are_restored_after_a_read(tmp_path):
    import warnings

    before = list(warnings.filters)
    with pytest.raises(DatasetError):
        read_image(png_header(tmp_path / "bomb.png", 10000, 10000))
    assert warnings.filters == before


@pytest.mark.parametrize("make", [png_header, jpeg_header])
def test_predict_refuses_a_bomb_with_one_line_before_building_the_model(make, tmp_path, monkeypatch, capsys):
    from pipeline import cli
    from pipeline.eval import predict

    def never(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setattr(predict, "build_segmenter", never)
    monkeypatch.setattr(predict, "load_params", never, raising=False)
    monkeypatch.chdir(tmp_path)
    bomb = make(tmp_path / f"bomb.{'png' if make is png_header else 'jpg'}", 30000, 30000)
    with pytest.raises(SystemExit) as exc:
        cli.main(["predict", str(bomb), "--classes", "a", "--params", str(REPO / "params.yaml")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{bomb} is too large to open safely" in err and "FOVSEG_MAX_IMAGE_PIXELS" in err
    assert not (tmp_path / "predictions").exists()
