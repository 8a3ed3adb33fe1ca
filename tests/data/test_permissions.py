"""Permission problems (issue 29, class 4): a file or folder that exists but cannot be read, entered or listed is
reported as "permission denied: <path>", never as missing (with a download hint), corrupt, or an empty folder.

Tests run as root here, where chmod 000 blocks nothing: the denial is simulated at the system-call level (open,
stat, scandir raise PermissionError for the chosen paths), which is what a non-root user gets."""
from __future__ import annotations

import builtins
import errno
import io
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import formats
from pipeline.errors import DatasetError, DownloadError, FovsegError


def _denied(p) -> PermissionError:
    return PermissionError(errno.EACCES, "Permission denied", os.fspath(p))


@pytest.fixture
def deny(monkeypatch):
    """``deny(path, "read")``: the file cannot be opened; ``"enter"``: nothing under the folder can be looked at;
    ``"list"``: the folder cannot be listed."""
    rules: list[tuple[str, str]] = []

    def hit(p, how: str) -> bool:
        s = os.fspath(p) if isinstance(p, (str, os.PathLike)) else None
        return s is not None and any(
            (h == how == "read" and s == d) or (h == "enter" and s.startswith(d + os.sep)) or (h == how == "list"
                                                                                               and s == d)
            for d, h in rules)

    real_open, real_stat, real_scandir = builtins.open, os.stat, os.scandir

    def fake_open(file, *a, **k):
        if hit(file, "read"):
            raise _denied(file)
        return real_open(file, *a, **k)

    def fake_stat(p, *a, **k):
        if hit(p, "stat"):
            raise _denied(p)
        return real_stat(p, *a, **k)

    def fake_scandir(p="."):
        if hit(p, "list"):
            raise _denied(p)
        return real_scandir(p)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "stat", fake_stat)
    monkeypatch.setattr(os, "scandir", fake_scandir)

    def add(path, how: str) -> None:
        rules.append((os.fspath(path), how))
    return add


def _assert_permission(exc: BaseException, path) -> None:
    msg = str(exc)
    assert isinstance(exc, FovsegError) and f"permission denied: {path}" in msg, msg
    for wrong in ("missing", "not found", "No such file", "corrupt", "re-download", "stages.download", "\n"):
        assert wrong not in msg, msg


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("how", ["read", "enter"])
def test_unreadable_json_is_permission_denied_not_missing(tmp_path, deny, how):
    path = tmp_path / "ann" / "panoptic_val2017.json"
    path.parent.mkdir()
    path.write_text("{}")
    deny(path if how == "read" else path.parent, how)
    with pytest.raises(DatasetError) as err:
        formats.read_json(path, hint="fetch or prepare it with `python -m stages.download --datasets coco`")
    _assert_permission(err.value, path)


@pytest.mark.parametrize("reader", ["read_image", "read_panoptic_png", "read_label_map"])
@pytest.mark.parametrize("how", ["read", "enter"])
def test_unreadable_image_is_permission_denied_not_corrupt(tmp_path, deny, reader, how):
    path = tmp_path / "imgs" / "1.png"
    formats.write_label_map(path, np.zeros((4, 4), np.int64))
    deny(path if how == "read" else path.parent, how)
    with pytest.raises(DatasetError) as err:
        getattr(formats, reader)(path)
    _assert_permission(err.value, path)


def test_a_missing_file_is_still_reported_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"missing file .*nope.json; fetch it"):
        formats.read_json(tmp_path / "nope.json", hint="fetch it")
    with pytest.raises(DatasetError, match=r"missing image"):
        formats.read_image(tmp_path / "nope.png")


# ----------------------------------------------------------------------------- folders: verification, preparation
def test_verifying_an_unlistable_image_folder_is_permission_denied(tmp_path, deny):
    from pipeline.data.registry import get_benchmark
    from pipeline.data.verify import verify_benchmark

    folder = tmp_path / "toy/images/val"
    folder.mkdir(parents=True)
    deny(folder, "list")
    with pytest.raises(DatasetError) as err:
        verify_benchmark(get_benchmark("toy_val"), tmp_path)
    _assert_permission(err.value, folder)


def test_verifying_a_folder_that_cannot_be_entered_is_permission_denied(tmp_path, deny):
    from pipeline.data.registry import get_benchmark
    from pipeline.data.verify import verify_benchmark

    (tmp_path / "toy/images/val").mkdir(parents=True)
    deny(tmp_path / "toy", "enter")
    with pytest.raises(DatasetError, match=r"permission denied: .*toy/"):
        verify_benchmark(get_benchmark("toy_val"), tmp_path)


def test_preparing_from_an_unlistable_folder_is_not_silently_empty(tmp_path, deny):
    """Path.glob swallows PermissionError: the ADE20K conversion would write 0 maps and report success."""
    from pipeline.data.conversions import ade20k_semantic

    folder = tmp_path / "ADEChallengeData2016/annotations/training"
    folder.mkdir(parents=True)
    formats.write_label_map(folder / "ADE_train_1.png", np.ones((4, 4), np.int64))
    deny(folder, "list")
    with pytest.raises(DatasetError) as err:
        ade20k_semantic(tmp_path)
    _assert_permission(err.value, folder)


def test_a_missing_raw_folder_still_prepares_nothing(tmp_path):
    from pipeline.data.conversions import ade20k_semantic

    assert ade20k_semantic(tmp_path) == {"ade20k_semantic_maps": 0}


def test_prepare_datasets_turns_any_permission_error_into_one_line(tmp_path, deny, monkeypatch):
    """Whatever step meets it (here a preparation step opening a raw file itself)."""
    from pipeline.data import prepare

    spec = prepare.DatasetSpec("toyset", prepare=lambda root: {"n": len(open(root / "raw.bin", "rb").read())})
    monkeypatch.setitem(prepare.DATASETS, "toyset", spec)
    (tmp_path / "raw.bin").write_bytes(b"x")
    deny(tmp_path / "raw.bin", "read")
    with pytest.raises(DatasetError) as err:
        prepare.prepare_datasets(["toyset"], tmp_path, None, 64)
    _assert_permission(err.value, tmp_path / "raw.bin")


# ----------------------------------------------------------------------------- downloads
@pytest.fixture
def server():
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/f.zip"
    httpd.shutdown()
    httpd.server_close()


def test_an_unwritable_download_folder_is_permission_denied_not_a_connection_failure(tmp_path, deny, server):
    from pipeline.data.download import fetch

    dest = tmp_path / "downloads" / "f.zip"
    dest.parent.mkdir()
    deny(Path(str(dest) + ".part"), "read")
    with pytest.raises(DownloadError) as err:
        fetch(server, dest)
    msg = str(err.value)
    assert "permission denied: " in msg and "f.zip.part" in msg and "connection" not in msg
