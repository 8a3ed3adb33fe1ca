"""Downloading dataset archives: resumable, verified and atomic.

Fetching is resumable (HTTP Range on ``<file>.part``; the Content-Range of a 206 must start where the
part ends, a 416 must report the part's size, a body must match its Content-Length or, without one,
be confirmed complete by a range probe), verified and atomic (the ``.part`` is renamed only when
complete and verified). Verification: against the sha256 pinned in ``pipeline/data/checksums/datasets.json``
where one is published; otherwise trust on first use: the sha256 and size of each file are recorded
at its first download in ``<root>/.fovseg-downloads.lock.json`` and every later run checks them. The
download manifest says, per file, which of the two verified it, and ``stages.download --check`` says it per
source before anything downloads. Every source URL is https (a test keeps it so). Extracting the archives
is :mod:`pipeline.data.archives`.
"""
from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.data.formats import read_json, write_json
from pipeline.errors import DownloadError, permission_message

log = logging.getLogger(__name__)


LOCK_FILE = ".fovseg-downloads.lock.json"  # under the dataset root: sha256 of every file at its first download


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class DownloadLock:
    """Trust on first use: the sha256 and size of each downloaded file, recorded at its first download in
    ``<root>/.fovseg-downloads.lock.json`` and checked on every later run (a corrupted file on disk or a server
    that now serves different bytes is refused). Files with a published checksum are checked against it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files: dict[str, dict] = read_json(self.path).get("files", {}) if self.path.is_file() else {}

    def get(self, name: str) -> dict | None:
        return self.files.get(name)

    def record(self, name: str, sha256: str, size: int, url: str) -> None:
        self.files[name] = {"sha256": sha256, "size": size, "url": url}
        write_json(self.path, {"_comment": "sha256 of each download at its first fetch (trust on first use); "
                                           "delete an entry only if you know the file changed upstream",
                               "files": self.files})


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of ``bytes a-b/total`` or ``bytes */total``; None where absent or ``*``."""
    if not header or not header.strip().startswith("bytes"):
        return None, None
    spec, _, total = header.strip()[5:].strip().partition("/")
    first = spec.split("-")[0].strip()
    return (int(first) if first.isdigit() else None), (int(total) if total.strip().isdigit() else None)


def _range_probe_confirms(url: str, size: int, timeout: float) -> bool:
    """Ask for the bytes after ``size``: a 416 (nothing there) confirms a body of unknown length is complete."""
    req = urllib.request.Request(url, headers={"Range": f"bytes={size}-"})
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return False  # 206: more bytes exist; 200: the server ignores ranges and cannot confirm
    except urllib.error.HTTPError as exc:
        total = _content_range(exc.headers.get("Content-Range"))[1]
        return exc.code == 416 and total in (None, size)
    except (OSError, http.client.HTTPException):
        return False


def _download_part(url: str, part: Path, chunk: int, timeout: float, retry_stale: bool = True) -> None:
    """Fill ``part`` with the whole body of ``url`` (resuming it), or raise; sizes and ranges are checked."""
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    total: int | None = None
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if have and resp.status == 206:
                first, total = _content_range(resp.headers.get("Content-Range"))
                if first is None:
                    raise DownloadError(f"{url}: the server answered 206 without a Content-Range; cannot tell where "
                                        f"its bytes belong. Delete {part} and re-run")
                if first == 0:  # the server restarted from the beginning: do so too
                    log.warning("%s: server restarted the download at byte 0; starting over", url)
                    have = 0
                elif first != have:
                    raise DownloadError(f"{url}: asked to resume at byte {have}, the server sent bytes from {first}; "
                                        f"delete {part} and re-run")
            elif have:  # 200: the server ignored Range, start over
                have = 0
            length = resp.headers.get("Content-Length")
            if total is None and length is not None:
                total = have + int(length)
            chunked = bool(getattr(resp, "chunked", False))
            with part.open("ab" if have else "wb") as fh:
                while block := resp.read(chunk):
                    fh.write(block)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            server_size = _content_range(exc.headers.get("Content-Range"))[1]
            if server_size == have:
                return  # the part already holds the whole file
            if not retry_stale:
                raise DownloadError(f"{url}: HTTP 416 for {part} ({have} bytes, server size {server_size}); delete "
                                    "it and re-run") from None
            log.warning("%s: %s holds %d bytes but the server's file has %s; downloading it again", url, part, have,
                        server_size if server_size is not None else "an unknown size")
            part.unlink()
            return _download_part(url, part, chunk, timeout, retry_stale=False)
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}; check the URL or your access to it "
                            f"(partial data kept in {part} if any)") from None
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, PermissionError):  # the local file, not the connection
            raise DownloadError(f"cannot save {url}: {permission_message(exc.filename or part)}") from None
        if getattr(exc, "errno", None) == errno.ENOSPC:
            free = shutil.disk_usage(part.parent).free / 2**30
            raise DownloadError(f"disk full while writing {part} ({free:.1f} GiB free); free space or set "
                                "$DETECTRON2_DATASETS to a larger disk, then re-run to resume") from None
        raise DownloadError(f"{url}: connection failed ({exc}); re-run to resume from {part} "
                            f"({part.stat().st_size if part.exists() else 0} bytes so far)") from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{url}: connection dropped after {size} of {total} bytes; re-run to resume from {part}")
    if total is None and not chunked and not _range_probe_confirms(url, size, timeout):
        raise DownloadError(f"{url}: the server declared no size and the connection ended after {size} bytes; "
                            f"cannot confirm the file is complete: re-run to resume from {part}")


def _verify(path: Path, name: str, url: str, sha256: str | None, lock: DownloadLock | None,
            downloaded: bool) -> str:
    """Check ``path`` against the published checksum, else the lock file (recording it on first use).
    Returns how it was verified; a freshly downloaded file that fails is removed."""
    got = sha256_of(path)
    if sha256:
        if got != sha256:
            if downloaded:
                path.unlink()
            raise DownloadError(f"{url}: checksum mismatch for {name} (got {got}, expected {sha256}); "
                                + ("the corrupt file was removed, re-run to download it again" if downloaded else
                                   f"delete {path} and re-run to download it again"))
        return "published checksum"
    if lock is None:
        return "unverified"
    entry = lock.get(name)
    if entry is None:
        lock.record(name, got, path.stat().st_size, url)
        return "trust on first use: recorded now"
    if entry["sha256"] != got:
        if downloaded:
            path.unlink()
        raise DownloadError(
            f"{path if not downloaded else url}: {name} does not match the sha256 recorded in {lock.path} at its first "
            f"download (recorded {entry['sha256']}, got {got}). "
            + ("The server now serves different bytes: check the source, and remove the entry from the lock file "
               "only if the change is expected" if downloaded else
               f"The file on disk changed or is corrupt: delete {path} and re-run to download it again"))
    return "trust on first use: matches the recorded sha256"


def fetch_verified(url: str, dest: Path, sha256: str | None = None, lock: DownloadLock | None = None,
                   chunk: int = 1 << 16, timeout: float = 30) -> tuple[Path, str]:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check its size and checksum, then rename.
    Returns the path and how it was verified (published checksum, trust on first use, unverified)."""
    dest = Path(dest)
    if dest.is_file():
        try:
            return dest, _verify(dest, dest.name, url, sha256, lock, downloaded=False)
        except DownloadError as exc:
            if not sha256:
                raise
            log.warning("%s; downloading it again", exc)  # the published checksum says which bytes are right
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    _download_part(url, part, chunk, timeout)
    how = _verify(part, dest.name, url, sha256, lock, downloaded=True)
    os.replace(part, dest)
    return dest, how


def fetch(url: str, dest: Path, sha256: str | None = None, chunk: int = 1 << 16, timeout: float = 30,
          lock: DownloadLock | None = None) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part``; verify, then rename."""
    return fetch_verified(url, dest, sha256, lock, chunk, timeout)[0]
