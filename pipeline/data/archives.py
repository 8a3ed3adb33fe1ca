"""Safe extraction of the downloaded zip/tar archives (:func:`safe_extract`).

Extraction refuses absolute paths, ``..``, links leaving the target, device files and fifos, file/folder
clashes and decompression bombs (caps on the expanded size and ratio, checked against the headers and against
the bytes actually written); it extracts into ``<dir>.partial``, then merges into an existing folder without
deleting anything the archive did not contain.
"""
from __future__ import annotations

import errno
import lzma
import os
import posixpath
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DownloadError, permission_message

# Caps on what one archive may expand to: sized for the real datasets (COCO train2017: 18 GB zipped, about as much
# extracted; ADE20K: 1 GB; images compress ~1x, annotation json zips 10-20x) with room to spare. A 300 KB zip of
# 300 MB of zeros (a decompression bomb) is refused. Checked twice: against the sizes the headers declare before
# anything is written, and against the bytes actually written, as they are written (headers can lie).
MAX_EXTRACT_BYTES = 200 * 2**30  # in all, whatever the archive's size
MAX_EXTRACT_RATIO = 100  # expanded size / archive size
MIN_EXTRACT_ALLOWANCE = 64 * 2**20  # small archives may always expand this far (a few KB of json, say)
MAX_ARCHIVE_MEMBERS = 2_000_000  # COCO train2017: 118k files; a bomb of empty files exhausts inodes instead
COPY_CHUNK = 1 << 20


def extraction_allowance(archive_size: int) -> int:
    """The most bytes an archive of ``archive_size`` bytes may expand to."""
    return min(MAX_EXTRACT_BYTES, max(MIN_EXTRACT_ALLOWANCE, MAX_EXTRACT_RATIO * archive_size))


@dataclass(frozen=True)
class _Entry:
    """One archive member, its name normalised (posix, relative to the target)."""

    name: str
    kind: str  # file | dir | symlink | hardlink
    size: int = 0  # declared size of a file
    link: str = ""  # a link's target as the archive gives it


class _Budget:
    """Counts the bytes actually written and refuses the one that passes the allowance."""

    def __init__(self, archive: Path, allowance: int):
        self.archive, self.allowance, self.used = archive, allowance, 0

    def spend(self, n: int, member: str) -> None:
        self.used += n
        if self.used > self.allowance:
            raise _cap_error(self.archive, member, self.allowance, "writing it passes")


def _cap_error(archive: Path, member: str, allowance: int, how: str) -> DownloadError:
    size = archive.stat().st_size
    caps = (f"{MAX_EXTRACT_RATIO}x its size, at least {MIN_EXTRACT_ALLOWANCE / 2**20:.0f} MiB, at most "
            f"{MAX_EXTRACT_BYTES / 2**30:.0f} GiB")
    return DownloadError(
        f"{archive}: refusing to extract: member {member!r} {how} the cap of {allowance / 2**20:.0f} MiB for this "
        f"{size / 2**20:.1f} MiB archive ({caps}: a decompression bomb or a wrong file); delete it and re-run to "
        "download it again (if the archive is genuine, raise MAX_EXTRACT_RATIO / MAX_EXTRACT_BYTES in "
        "pipeline/data/archives.py)")


def _normalise(archive: Path, name: str) -> str:
    """The member's path relative to the target; absolute paths and ``..`` are refused."""
    norm = posixpath.normpath(name)
    if os.path.isabs(name) or name.startswith("\\") or norm == ".." or norm.startswith("../"):
        raise DownloadError(f"{archive}: refusing unsafe member {name!r} (absolute or leaving the target with ..); "
                            "delete the archive and re-run to download it again")
    return norm


def _zip_entries(archive: Path, zf: zipfile.ZipFile) -> list[_Entry]:
    return [_Entry(_normalise(archive, i.filename), "dir" if i.is_dir() else "file", i.file_size)
            for i in zf.infolist()]


def _tar_entry(archive: Path, m: tarfile.TarInfo) -> _Entry:
    """The member as an entry; device files, fifos and unknown types are refused."""
    name = _normalise(archive, m.name)
    if m.isdir():
        return _Entry(name, "dir")
    if m.isreg():  # also contiguous and sparse files (their size is the expanded one)
        return _Entry(name, "file", m.size)
    if m.issym():
        return _Entry(name, "symlink", link=m.linkname)
    if m.islnk():
        return _Entry(name, "hardlink", link=m.linkname)
    what = "a device file" if m.ischr() or m.isblk() else "a fifo" if m.isfifo() else f"of type {m.type!r}"
    raise DownloadError(f"{archive}: refusing member {m.name!r}: it is {what}, which a dataset never holds; delete "
                        "the archive and re-run to download it again")


def _check_link(archive: Path, e: _Entry, seen: dict[str, str]) -> None:
    """Symlinks must stay inside the target; hardlinks must name a file the archive held before."""
    if e.kind == "symlink":
        target = posixpath.normpath(posixpath.join(posixpath.dirname(e.name), e.link))
        if os.path.isabs(e.link) or target == ".." or target.startswith("../"):
            raise DownloadError(f"{archive}: refusing link {e.name!r} -> {e.link!r} leaving the target; delete the "
                                "archive and re-run to download it again")
    elif e.kind == "hardlink":
        target = posixpath.normpath(e.link)
        if os.path.isabs(e.link) or target == ".." or target.startswith("../"):
            raise DownloadError(f"{archive}: refusing hard link {e.name!r} -> {e.link!r} leaving the target; delete "
                                "the archive and re-run to download it again")
        if seen.get(target) != "file":
            raise DownloadError(f"{archive}: refusing hard link {e.name!r} -> {e.link!r}: the archive holds no file "
                                f"{target!r} before it; delete the archive and re-run to download it again")


def _clash(archive: Path, name: str, was: str, now: str) -> DownloadError:
    def what(kind: str) -> str:
        return "a folder" if kind == "dir" else "a file" if kind == "file" else f"a {kind}"
    return DownloadError(f"{archive}: member {name!r} is {what(was)} and also {what(now)} in this archive (a file "
                         "and a folder, or a link, with one name): refusing it; delete the archive and re-run to "
                         "download it again")


def _check_layout(archive: Path, e: _Entry, seen: dict[str, str]) -> None:
    """Record ``e`` in ``seen`` (path -> kind); a path that is a folder and a file (or link), or a member under a
    file or link, is refused."""
    parts = e.name.split("/")
    for i in range(1, len(parts)):
        parent = "/".join(parts[:i])
        if seen.setdefault(parent, "dir") != "dir":
            raise _clash(archive, parent, seen[parent], "dir")
    was = seen.get(e.name)
    if was is not None and (was != e.kind or e.kind not in ("file", "dir")):
        raise _clash(archive, e.name, was, e.kind)
    seen[e.name] = e.kind


def _check_declared_size(archive: Path, entries: list[_Entry], allowance: int) -> None:
    """Refuse, before anything is written, an archive whose headers declare more than ``allowance`` bytes."""
    total = 0
    for e in entries:
        total += e.size
        if total > allowance:
            raise _cap_error(archive, e.name, allowance, "declares a size that passes")


def _check_entries(archive: Path, entries: list[_Entry], allowance: int) -> None:
    """Every check that needs no extraction: member count, names, links, file/folder clashes, declared size."""
    if len(entries) > MAX_ARCHIVE_MEMBERS:
        raise DownloadError(f"{archive}: refusing to extract {len(entries)} members (the cap is {MAX_ARCHIVE_MEMBERS}, "
                            "MAX_ARCHIVE_MEMBERS in pipeline/data/archives.py); delete it and re-run to download it "
                            "again")
    seen: dict[str, str] = {".": "dir"}
    for e in entries:
        if e.name != ".":
            _check_link(archive, e, seen)
            _check_layout(archive, e, seen)
    _check_declared_size(archive, entries, allowance)


def _copy_counted(src, dest: Path, budget: _Budget, member: str) -> None:
    """Copy the stream ``src`` into a new file ``dest`` (never through a link), counting every byte."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()  # a duplicate member: the last one wins, as tar does
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    with os.fdopen(fd, "wb") as out:
        while block := src.read(COPY_CHUNK):
            budget.spend(len(block), member)
            out.write(block)


def _write_members(archive: Path, partial: Path, allowance: int, members: list, entries: list[_Entry],
                   open_file, extract_link=None) -> None:
    """Check ``entries`` (see :func:`_check_entries`), then write each member under ``partial``: folders made,
    files copied through ``open_file(member)`` with every byte counted, links (tar only) by ``extract_link``."""
    _check_entries(archive, entries, allowance)
    budget = _Budget(archive, allowance)
    for m, e in zip(members, entries):
        if e.name == ".":
            continue
        if e.kind == "dir":
            (partial / e.name).mkdir(parents=True, exist_ok=True)
        elif e.kind == "file":
            with open_file(m) as src:
                _copy_counted(src, partial / e.name, budget, e.name)
        else:
            extract_link(m, e)


def _extract_zip(archive: Path, partial: Path, allowance: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        _write_members(archive, partial, allowance, zf.infolist(), _zip_entries(archive, zf), zf.open)


def _extract_tar(archive: Path, partial: Path, allowance: int) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()

        def extract_link(m: tarfile.TarInfo, e: _Entry) -> None:
            # a link checked by _check_entries; tarfile's "data" filter checks it again (also through earlier links)
            tf.extract(m.replace(name=e.name, deep=False), partial, set_attrs=False, filter="data")

        _write_members(archive, partial, allowance, members, [_tar_entry(archive, m) for m in members],
                       tf.extractfile, extract_link)


def _extraction_error(archive: Path, exc: BaseException) -> DownloadError:
    """One line for an archive that breaks while it is extracted (damaged data, a full disk, a permission)."""
    if isinstance(exc, PermissionError):
        return DownloadError(f"{archive}: {permission_message(exc.filename or archive)} while extracting it")
    if getattr(exc, "errno", None) == errno.ENOSPC:
        free = shutil.disk_usage(archive.parent).free / 2**30
        return DownloadError(f"disk full while extracting {archive} ({free:.1f} GiB free); free space or set "
                             "$DETECTRON2_DATASETS to a larger disk, then re-run")
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, tarfile.FilterError):  # e.g. a link that leaves the target through an earlier link
        return DownloadError(f"{archive}: refusing a member ({first}); delete it and re-run to download it again")
    return DownloadError(f"{archive} is damaged ({first}); delete it and re-run to download it again")


EXTRACTION_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a zip/tar into ``target``; refuse absolute paths, ``..``, links leaving it, hard links to files the
    archive does not hold, device files and fifos, a name that is both a file (or link) and a folder, members under
    a link, more than the size caps (:data:`MAX_EXTRACT_RATIO`, :data:`MAX_EXTRACT_BYTES`) or members
    (:data:`MAX_ARCHIVE_MEMBERS`). Links inside the target are kept. Zip entries are extracted as plain files.

    Extraction goes to ``target.partial`` first, then is renamed, or merged into an existing ``target``
    (:func:`_merge_into`); a refused or damaged archive leaves nothing behind."""
    archive, target = Path(archive), Path(target)
    if target.exists() and not target.is_dir():
        raise DownloadError(f"{archive}: cannot extract into {target}: {target} is a file; move it away and re-run")
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    allowance = extraction_allowance(archive.stat().st_size)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, partial, allowance)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, partial, allowance)
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar archive; delete it and re-run")
    except EXTRACTION_ERRORS as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise _extraction_error(archive, exc) from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if target.exists():
        try:
            _merge_into(partial, target, archive)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    else:
        os.replace(partial, target)
    return target


def _merge_into(src: Path, dst: Path, archive: Path) -> None:
    """Move the extracted tree ``src`` into the existing ``dst``: folders merge (also a user's symlink to a folder,
    e.g. ``coco/`` on another disk), files the archive holds replace their old copy, everything else in ``dst``
    (the user's files) stays."""
    for child in sorted(src.iterdir()):
        out = dst / child.name
        if child.is_dir() and not child.is_symlink():
            if out.is_dir():
                _merge_into(child, out, archive)
                continue
            if out.exists() or out.is_symlink():
                raise DownloadError(f"{archive}: {out} is a file but the archive has a folder there; move it away "
                                    "and re-run")
        elif out.is_dir() and not out.is_symlink():
            raise DownloadError(f"{archive}: {out} is a folder but the archive has a file there; move it away and "
                                "re-run (it is never deleted)")
        elif out.is_dir():
            raise DownloadError(f"{archive}: {out} links to a folder but the archive has a file there; move it away "
                                "and re-run (it is never deleted)")
        os.replace(child, out)
