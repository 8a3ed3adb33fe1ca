"""Fault-campaign download defects (issue 10, items 8.2 and 8.3) against a loopback server (127.0.0.1).

Each server mode reproduces one misbehaviour seen in the campaign: a body without Content-Length that
drops, a 206 that restarts at byte 0, a 416 answering a stale longer ``.part``, content that changes
after the first download.
"""
import hashlib
import io
import json
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.data.archives import safe_extract
from pipeline.data.download import DownloadLock, fetch
from pipeline.data.prepare import DATASETS, fetch_dataset
from pipeline.errors import DownloadError

PAYLOAD = bytes(range(256)) * 200  # 51200 bytes


class _Server:
    """``mode``: normal | no_length_drop | no_length | range_restarts | no_content_range."""

    def __init__(self, body: bytes, mode: str = "normal", drop_after: int = 10_000):
        self.body, self.mode, self.drop_after, self.requests = body, mode, drop_after, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.headers.get("Range"))
                body, mode = outer.body, outer.mode
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if rng and start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rng and mode == "range_restarts":  # claims partial content but sends it all from 0
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes 0-{len(body) - 1}/{len(body)}")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if rng:
                    self.send_response(206)
                    if mode != "no_content_range":
                        self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                if mode not in ("no_length_drop", "no_length"):
                    self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if mode == "no_length_drop" and not rng:
                    self.wfile.write(chunk[: outer.drop_after])
                    return  # HTTP/1.0 without a length: closing the connection ends the body "cleanly"
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/f.zip"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    made = []

    def make(body=PAYLOAD, mode="normal", **kw):
        made.append(_Server(body, mode, **kw))
        return made[-1]
    yield make
    for s in made:
        s.close()


def test_body_without_length_that_drops_is_not_accepted(server, tmp_path):
    srv = server(mode="no_length_drop")
    with pytest.raises(DownloadError, match=r"cannot confirm.*complete.*re-run"):
        fetch(srv.url, tmp_path / "f.zip")
    assert not (tmp_path / "f.zip").exists()
    srv.mode = "normal"  # the re-run resumes and completes
    assert fetch(srv.url, tmp_path / "f.zip").read_bytes() == PAYLOAD


def test_body_without_length_is_confirmed_complete_by_a_range_probe(server, tmp_path):
    srv = server(mode="no_length")
    assert fetch(srv.url, tmp_path / "f.zip").read_bytes() == PAYLOAD
    assert srv.requests[-1] == f"bytes={len(PAYLOAD)}-"  # the probe the server answered with 416 */size


def test_206_restarting_at_zero_is_detected(server, tmp_path):
    (tmp_path / "f.zip.part").write_bytes(PAYLOAD[:10_000])
    srv = server(mode="range_restarts")
    out = fetch(srv.url, tmp_path / "f.zip")
    assert out.read_bytes() == PAYLOAD  # not the first 10000 bytes twice


def test_206_without_content_range_is_refused(server, tmp_path):
    (tmp_path / "f.zip.part").write_bytes(PAYLOAD[:10_000])
    srv = server(mode="no_content_range")
    with pytest.raises(DownloadError, match=r"206 without a Content-Range"):
        fetch(srv.url, tmp_path / "f.zip")
    assert not (tmp_path / "f.zip").exists()


def test_stale_longer_part_answered_by_416_is_downloaded_again(server, tmp_path):
    (tmp_path / "f.zip.part").write_bytes(PAYLOAD + b"stale tail from another version")
    srv = server()
    out = fetch(srv.url, tmp_path / "f.zip")
    assert out.read_bytes() == PAYLOAD


def test_part_of_the_exact_size_answered_by_416_is_complete(server, tmp_path):
    (tmp_path / "f.zip.part").write_bytes(PAYLOAD)
    srv = server()
    assert fetch(srv.url, tmp_path / "f.zip").read_bytes() == PAYLOAD
    assert srv.requests == [f"bytes={len(PAYLOAD)}-"]


def test_first_download_is_recorded_and_later_verified(server, tmp_path):
    srv = server()
    lock = DownloadLock(tmp_path / ".fovseg-downloads.lock.json")
    fetch(srv.url, tmp_path / "dl" / "f.zip", lock=lock)
    entry = json.loads((tmp_path / ".fovseg-downloads.lock.json").read_text())["files"]["f.zip"]
    assert entry["sha256"] == hashlib.sha256(PAYLOAD).hexdigest() and entry["size"] == len(PAYLOAD)
    assert entry["url"] == srv.url
    # the file is later corrupted on disk: the next run refuses it
    (tmp_path / "dl" / "f.zip").write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(DownloadError, match=r"f.zip.*does not match the sha256 recorded"):
        fetch(srv.url, tmp_path / "dl" / "f.zip", lock=DownloadLock(tmp_path / ".fovseg-downloads.lock.json"))


def test_server_content_changed_after_first_download_is_refused(server, tmp_path):
    srv = server()
    lock = DownloadLock(tmp_path / "lock.json")
    fetch(srv.url, tmp_path / "f.zip", lock=lock)
    (tmp_path / "f.zip").unlink()
    srv.body = PAYLOAD[::-1]
    with pytest.raises(DownloadError, match=r"does not match the sha256 recorded"):
        fetch(srv.url, tmp_path / "f.zip", lock=DownloadLock(tmp_path / "lock.json"))
    assert not (tmp_path / "f.zip").exists()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_manifest_says_which_files_are_verified_how(server, tmp_path, monkeypatch):
    from pipeline.data import prepare as download

    body = _zip({"toyset/a.txt": b"a"})
    srv = server(body=body)
    spec = download.DatasetSpec("toyset", (download.Source(srv.url, "toyset.zip"),
                                           download.Source(srv.url, "pinned.zip")), expected=("toyset/a.txt",))
    pinned = {"toyset.zip": None, "pinned.zip": hashlib.sha256(body).hexdigest()}
    first = fetch_dataset(spec, tmp_path, pinned)
    assert first["files"]["pinned.zip"]["verified"] == "published checksum"
    assert first["files"]["toyset.zip"]["verified"] == "trust on first use: recorded now"
    assert first["unpinned"] == ["toyset.zip"] and first["verified_checksums"] is False
    again = fetch_dataset(spec, tmp_path, pinned)
    assert again["files"]["toyset.zip"]["verified"] == "trust on first use: matches the recorded sha256"
    assert (tmp_path / ".fovseg-downloads.lock.json").is_file()


def test_registry_prefers_https():
    hosts_with_https = ("images.cocodataset.org", "data.csail.mit.edu")
    urls = [s.url for spec in DATASETS.values() for s in spec.sources]
    assert urls and all(u.startswith("https://") for u in urls if any(h in u for h in hosts_with_https))


# ----------------------------------------------------------------------------- extraction (item 8.3)
def test_extraction_keeps_user_files_in_existing_folders(tmp_path):
    root = tmp_path / "root"
    user = root / "coco/annotations/instances_val2017.json"  # a detectron2-prepared COCO
    user.parent.mkdir(parents=True)
    user.write_text('{"mine": true}')
    (root / "coco/val2017").mkdir()
    (root / "coco/val2017/old.jpg").write_bytes(b"old")
    archive = tmp_path / "pan.zip"
    archive.write_bytes(_zip({"coco/annotations/panoptic_val2017.json": b"{}", "coco/val2017/1.jpg": b"x"}))
    safe_extract(archive, root)
    assert user.read_text() == '{"mine": true}'
    assert (root / "coco/val2017/old.jpg").read_bytes() == b"old"
    assert (root / "coco/annotations/panoptic_val2017.json").read_bytes() == b"{}"
    assert (root / "coco/val2017/1.jpg").read_bytes() == b"x"
    assert not (tmp_path / "root.partial").exists()


def test_extraction_replaces_only_the_files_the_archive_has(tmp_path):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d/f.txt").write_text("old")
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"d/f.txt": b"new"}))
    safe_extract(archive, root)
    assert (root / "d/f.txt").read_text() == "new"


def test_extraction_never_replaces_a_user_folder_by_a_file(tmp_path):
    root = tmp_path / "root"
    (root / "d/x").mkdir(parents=True)
    (root / "d/x/keep.txt").write_text("keep")
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"d/x": b"a file where the user has a folder"}))
    with pytest.raises(DownloadError, match=r"d/x.*is a folder"):
        safe_extract(archive, root)
    assert (root / "d/x/keep.txt").read_text() == "keep"


def test_existing_file_failing_its_published_checksum_is_downloaded_again(server, tmp_path):
    srv = server()
    (tmp_path / "f.zip").write_bytes(b"corrupt")
    out = fetch(srv.url, tmp_path / "f.zip", hashlib.sha256(PAYLOAD).hexdigest())
    assert out.read_bytes() == PAYLOAD
