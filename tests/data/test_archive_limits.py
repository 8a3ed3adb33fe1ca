"""Hostile and damaged archives (issue 29, classes 4 and 5): decompression bombs, special members, file/folder
clashes and damaged archives are refused with one DownloadError naming the archive and the member; nothing is
left behind (no ``<target>.partial``, the target untouched)."""
import io
import tarfile
import zipfile

import pytest

from pipeline.data import archives
from pipeline.data.archives import safe_extract
from pipeline.errors import DownloadError, FovsegError


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None, mode: str = "w") -> None:
    with tarfile.open(path, mode) as tf:
        for info in members:
            body = (data or {}).get(info.name) if info.isreg() else None
            if body is not None:
                info.size = len(body)
            tf.addfile(info, io.BytesIO(body) if body is not None else None)


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def _nothing_left(tmp_path, target: str = "out") -> bool:
    return not (tmp_path / target).exists() and not (tmp_path / f"{target}.partial").exists()


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory):
    """The issue's example: a 300 KB zip that expands to 300 MB (zeros, deflate level 9)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("data/bomb.bin", "w", force_zip64=True) as fh:
            block = bytes(1 << 20)
            for _ in range(300):
                fh.write(block)
    assert path.stat().st_size < 400_000
    return path


# ----------------------------------------------------------------------------- size and ratio caps
def test_the_caps_suit_the_real_datasets():
    assert archives.MAX_EXTRACT_BYTES >= 100 * 2**30  # COCO train2017: 18 GB zipped, about as much extracted
    assert 20 <= archives.MAX_EXTRACT_RATIO <= 1000  # images ~1x, annotation json zips 10-20x
    assert archives.extraction_allowance(1_000_000_000) == archives.MAX_EXTRACT_RATIO * 1_000_000_000
    assert archives.extraction_allowance(10**12) == archives.MAX_EXTRACT_BYTES


def test_zip_bomb_is_refused_naming_archive_member_and_cap(zip_bomb, tmp_path):
    with pytest.raises(DownloadError) as err:
        safe_extract(zip_bomb, tmp_path / "out")
    msg = str(err.value)
    assert "bomb.zip" in msg and "data/bomb.bin" in msg and f"{archives.MAX_EXTRACT_RATIO}x" in msg
    assert "\n" not in msg and _nothing_left(tmp_path)


def test_bytes_are_counted_while_writing_when_headers_lie(zip_bomb, tmp_path, monkeypatch):
    """Headers can lie: with the declared sizes trusted blindly (the header check disabled), the bytes actually
    written still stop the extraction at the cap, not after 300 MB."""
    monkeypatch.setattr(archives, "_check_declared_size", lambda *a, **k: None)
    written = []
    real_write = archives._copy_counted

    def spy(src, dest, budget, member):
        real_write(src, dest, budget, member)
        written.append(dest.stat().st_size)
    monkeypatch.setattr(archives, "_copy_counted", spy)
    with pytest.raises(DownloadError, match=r"bomb.zip.*data/bomb.bin.*cap"):
        safe_extract(zip_bomb, tmp_path / "out")
    assert not written  # the member never completed
    assert _nothing_left(tmp_path)


def test_tar_gz_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    _tar(archive, [_info("big.bin")], {"big.bin": bytes(80 * 2**20)}, mode="w:gz")
    assert archive.stat().st_size < 200_000
    with pytest.raises(DownloadError, match=r"bomb.tar.gz.*big.bin.*cap"):
        safe_extract(archive, tmp_path / "out")
    assert _nothing_left(tmp_path)


def test_too_many_members_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "MAX_ARCHIVE_MEMBERS", 5)
    archive = tmp_path / "many.zip"
    archive.write_bytes(_zip({f"f{i}.txt": b"" for i in range(6)}))
    with pytest.raises(DownloadError, match=r"many.zip.*6 members.*5"):
        safe_extract(archive, tmp_path / "out")


def test_an_ordinary_archive_still_extracts(tmp_path):
    archive = tmp_path / "ok.zip"
    archive.write_bytes(_zip({"d/a.json": b"{}" * 1000, "d/e/": b"", "b.txt": b"hello"}))
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/d/a.json").read_bytes() == b"{}" * 1000 and (tmp_path / "out/d/e").is_dir()
    assert (tmp_path / "out/b.txt").read_bytes() == b"hello" and not (tmp_path / "out.partial").exists()


# ----------------------------------------------------------------------------- special members
@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE])
def test_device_files_and_fifos_are_refused(tmp_path, kind):
    archive = tmp_path / "dev.tar"
    _tar(archive, [_info("ok.txt"), _info("data/dev", kind)], {"ok.txt": b"ok"})
    with pytest.raises(DownloadError, match=r"dev.tar.*data/dev.*(device|fifo)") as err:
        safe_extract(archive, tmp_path / "out")
    assert isinstance(err.value, FovsegError) and _nothing_left(tmp_path)


def test_symlink_inside_the_target_is_kept(tmp_path):
    archive = tmp_path / "links.tar"
    _tar(archive, [_info("d/a.txt"), _info("d/link", tarfile.SYMTYPE, "a.txt")], {"d/a.txt": b"a"})
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/d/link").is_symlink() and (tmp_path / "out/d/link").read_bytes() == b"a"


@pytest.mark.parametrize("member", [_info("d/abs", tarfile.SYMTYPE, "/etc/passwd"),
                                    _info("d/up", tarfile.SYMTYPE, "../../x"),
                                    _info("d/hard", tarfile.LNKTYPE, "../etc/passwd"),
                                    _info("d/hard", tarfile.LNKTYPE, "/etc/passwd")])
def test_links_leaving_the_target_are_refused(tmp_path, member):
    archive = tmp_path / "links.tar"
    _tar(archive, [_info("d/a.txt"), member], {"d/a.txt": b"a"})
    with pytest.raises(DownloadError, match=r"links.tar.*(link|unsafe)"):
        safe_extract(archive, tmp_path / "out")
    assert _nothing_left(tmp_path)


def test_hardlink_to_a_file_the_archive_does_not_hold_is_refused(tmp_path):
    archive = tmp_path / "links.tar"
    _tar(archive, [_info("d/hard", tarfile.LNKTYPE, "d/missing.txt")])
    with pytest.raises(DownloadError, match=r"links.tar.*d/hard.*d/missing.txt"):
        safe_extract(archive, tmp_path / "out")


def test_hardlink_to_an_earlier_file_is_extracted(tmp_path):
    archive = tmp_path / "links.tar"
    _tar(archive, [_info("d/a.txt"), _info("d/hard", tarfile.LNKTYPE, "d/a.txt")], {"d/a.txt": b"a"})
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/d/hard").read_bytes() == b"a"


def test_members_written_through_a_link_are_refused(tmp_path):
    """A symlink member, then a file "under" it: writing the file would follow the link."""
    archive = tmp_path / "through.tar"
    _tar(archive, [_info("d/sub", tarfile.SYMTYPE, "."), _info("d/sub/x.txt")], {"d/sub/x.txt": b"x"})
    with pytest.raises(DownloadError, match=r"through.tar.*d/sub"):
        safe_extract(archive, tmp_path / "out")
    assert _nothing_left(tmp_path)


# ----------------------------------------------------------------------------- file/folder clashes
@pytest.mark.parametrize("members", [{"a/b": b"file", "a/b/c.txt": b"under a file"},
                                     {"a/b/c.txt": b"x", "a/b": b"a file where a folder is"},
                                     {"a/b/": b"", "a/b": b"file and folder"}])
def test_file_and_folder_with_one_name_in_one_zip_are_refused(tmp_path, members):
    archive = tmp_path / "clash.zip"
    archive.write_bytes(_zip(members))
    with pytest.raises(DownloadError, match=r"clash.zip.*a/b.*(file|folder)") as err:
        safe_extract(archive, tmp_path / "out")
    assert "\n" not in str(err.value) and _nothing_left(tmp_path)


def test_file_and_folder_with_one_name_in_one_tar_are_refused(tmp_path):
    archive = tmp_path / "clash.tar"
    _tar(archive, [_info("a", tarfile.DIRTYPE), _info("a")], {"a": b"x"})
    with pytest.raises(DownloadError, match=r"clash.tar.*'a'.*(file|folder)"):
        safe_extract(archive, tmp_path / "out")


def test_archive_folder_where_the_target_has_a_file_is_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "d").write_text("the user's file")
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"d/x.txt": b"x"}))
    with pytest.raises(DownloadError, match=r"a.zip.*d is a file"):
        safe_extract(archive, root)
    assert (root / "d").read_text() == "the user's file" and not (tmp_path / "root.partial").exists()


def test_a_target_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "root").write_text("not a folder")
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"x.txt": b"x"}))
    with pytest.raises(DownloadError, match=r"root is a file"):
        safe_extract(archive, tmp_path / "root")
    assert (tmp_path / "root").read_text() == "not a folder"


def test_a_user_folder_linked_into_the_target_is_merged_into(tmp_path):
    """A dataset root whose coco/ is a symlink to another disk (a common detectron2 setup) receives the files."""
    elsewhere = tmp_path / "disk2/coco"
    elsewhere.mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    (root / "coco").symlink_to(elsewhere)
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"coco/val2017/1.jpg": b"x"}))
    safe_extract(archive, root)
    assert (elsewhere / "val2017/1.jpg").read_bytes() == b"x" and (root / "coco").is_symlink()


# ----------------------------------------------------------------------------- damaged archives
def test_zip_with_a_bad_crc_is_a_clear_error(tmp_path):
    data = bytearray(_zip({"a.txt": b"hello world " * 100}))
    at = bytes(data).find(b"a.txt") + len("a.txt") + 5  # inside the compressed data of the first member
    data[at] ^= 0xFF
    archive = tmp_path / "bad.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match=r"bad.zip.*(damaged|delete it)"):
        safe_extract(archive, tmp_path / "out")
    assert _nothing_left(tmp_path)


def test_truncated_tar_gz_is_a_clear_error(tmp_path):
    archive = tmp_path / "t.tar.gz"
    _tar(archive, [_info(f"f{i}.bin") for i in range(3)], {f"f{i}.bin": bytes(range(256)) * 400 for i in range(3)},
         mode="w:gz")
    archive.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(DownloadError, match=r"t.tar.gz.*(damaged|delete it)"):
        safe_extract(archive, tmp_path / "out")
    assert _nothing_left(tmp_path)


def test_disk_full_while_extracting_is_a_clear_error(tmp_path, monkeypatch):
    import errno

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(archives, "_copy_counted", full)
    archive = tmp_path / "a.zip"
    archive.write_bytes(_zip({"x.txt": b"x"}))
    with pytest.raises(DownloadError, match=r"disk full while extracting .*a.zip"):
        safe_extract(archive, tmp_path / "out")
    assert _nothing_left(tmp_path)


def test_a_link_leaving_through_an_earlier_link_is_refused(tmp_path):
    """Each link alone stays inside; followed one after the other they leave: tarfile's filter, applied to what is
    on disk, refuses it, and the refusal is one DownloadError."""
    archive = tmp_path / "chain.tar"
    _tar(archive, [_info("x", tarfile.DIRTYPE), _info("x/l1", tarfile.SYMTYPE, ".."),
                   _info("y", tarfile.SYMTYPE, "x/l1/..")])
    with pytest.raises(DownloadError, match=r"chain.tar.*refusing"):
        safe_extract(archive, tmp_path / "out")
    assert _nothing_left(tmp_path)
