"""Download tests against a loopback HTTP server started here; no test touches the real network."""
import hashlib
import io
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.data.archives import safe_extract
from pipeline.data.download import fetch
from pipeline.errors import DownloadError


class _Server:
    def __init__(self, files: dict[str, bytes], drop_after: int | None = None):
        self.files, self.drop_after, self.requests = files, drop_after, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(dict(self.headers))
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if outer.drop_after is not None and not rng:
                    self.wfile.write(chunk[: outer.drop_after])
                    self.wfile.flush()
                    self.connection.close()  # drop the connection midway
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers = []

    def make(files, drop_after=None):
        s = _Server(files, drop_after)
        servers.append(s)
        return s
    yield make
    for s in servers:
        s.close()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_resume_after_dropped_connection(server, tmp_path):
    payload = bytes(range(256)) * 400
    srv = server({"/data.zip": payload}, drop_after=10_000)
    sha = hashlib.sha256(payload).hexdigest()
    with pytest.raises(DownloadError, match="re-run to resume"):
        fetch(srv.url + "/data.zip", tmp_path / "data.zip", sha)
    part = tmp_path / "data.zip.part"
    assert part.stat().st_size == 10_000 and not (tmp_path / "data.zip").exists()
    out = fetch(srv.url + "/data.zip", tmp_path / "data.zip", sha)
    assert out.read_bytes() == payload and not part.exists()
    assert any(r.get("Range") == "bytes=10000-" for r in srv.requests)


def test_checksum_mismatch_removes_the_bad_file(server, tmp_path):
    srv = server({"/a.tar": b"corrupted bytes"})
    with pytest.raises(DownloadError, match="checksum mismatch"):
        fetch(srv.url + "/a.tar", tmp_path / "a.tar", "0" * 64)
    assert not (tmp_path / "a.tar").exists() and not (tmp_path / "a.tar.part").exists()


def test_404_names_the_url(server, tmp_path):
    srv = server({})
    with pytest.raises(DownloadError, match=r"missing.zip: HTTP 404"):
        fetch(srv.url + "/missing.zip", tmp_path / "m.zip")


@pytest.mark.parametrize("bad", ["../evil.txt", "/abs/evil.txt", "ok/../../evil.txt"])
def test_traversal_archive_is_refused(tmp_path, bad):
    archive = tmp_path / "bad.zip"
    archive.write_bytes(_zip({"fine.txt": b"ok", bad: b"pwned"}))
    with pytest.raises(DownloadError, match="unsafe member"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_tar_link_leaving_target_is_refused(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("data/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "../../etc/passwd"
        tf.addfile(info)
    with pytest.raises(DownloadError, match="leaving the target"):
        safe_extract(archive, tmp_path / "out")


def test_fetch_and_extract_fabricated_dataset(server, tmp_path):
    payload = _zip({"coco/val2017/1.jpg": b"x", "coco/annotations/panoptic_val2017.json": b"{}"})
    srv = server({"/coco.zip": payload})
    archive = fetch(srv.url + "/coco.zip", tmp_path / "dl" / "coco.zip", hashlib.sha256(payload).hexdigest())
    safe_extract(archive, tmp_path / "root")
    assert (tmp_path / "root/coco/val2017/1.jpg").read_bytes() == b"x"


def test_full_disk_is_a_clear_error(server, tmp_path, monkeypatch):
    import builtins
    import errno as errno_mod

    srv = server({"/big.zip": b"x" * 1000})
    real_open = open

    class FullFile:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.fh.close()

        def write(self, _data):
            raise OSError(errno_mod.ENOSPC, "No space left on device")

    def fake_open(self, mode="r", *args, **kwargs):
        fh = real_open(self, mode, *args, **kwargs)
        return FullFile(fh) if "b" in mode and ("w" in mode or "a" in mode) else fh

    monkeypatch.setattr("pathlib.Path.open", fake_open)
    with pytest.raises(DownloadError, match=r"disk full while writing .*big.zip.part.*GiB free"):
        fetch(srv.url + "/big.zip", tmp_path / "big.zip")
    assert not (tmp_path / "big.zip").exists()
    assert builtins.open is real_open


def test_licence_gated_dataset_prints_instructions_then_verifies(tmp_path):
    from pipeline.data.formats import DatasetError
    from pipeline.data.prepare import DATASETS, fetch_dataset

    spec = DATASETS["mapillary_vistas"]
    with pytest.raises(DatasetError, match=r"needs a login: request it at https://www.mapillary.com"):
        fetch_dataset(spec, tmp_path, {})
    for rel in spec.expected:
        p = tmp_path / rel
        if p.suffix:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("{}")
        else:
            p.mkdir(parents=True, exist_ok=True)
    result = fetch_dataset(spec, tmp_path, {})
    assert result["dataset"] == "mapillary_vistas"
