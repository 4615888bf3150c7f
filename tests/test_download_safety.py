"""Unpacking never touches the downloader's own files, and a refused archive is neither kept nor
trusted (docs/downloads.md, docs/architecture.md Guarantees)."""

from __future__ import annotations

import json
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amc.download import (
    LOCK_FILENAME,
    ArchiveError,
    UnsafeArchiveError,
    download,
    is_downloader_file,
    read_lock,
)
from tests.test_download import FAST, artifact, server, tar_bytes, zip_bytes  # noqa: F401


def test_downloader_file_names():
    for name in (LOCK_FILENAME, f".{LOCK_FILENAME}.flock", "a.zip.part", ".x.unpacked", "a.zip.refused",
                 ".x.unpacking-abc", ".best.pth.gdrive", ".best.pth.gdriveXYZ.part"):  # fmt: skip
        assert is_downloader_file(name), name
    for name in ("VG_100K", "data", "image_data.json", "part", "refused.txt"):
        assert not is_downloader_file(name), name


def assert_refused(tmp_path, art, archive_name: str) -> None:
    """The archive was refused: moved aside, not in the lock, nothing unpacked, no marker."""
    assert not (tmp_path / art.filename).exists()
    assert (tmp_path / f"{art.filename}.refused").exists()
    assert art.name not in read_lock(tmp_path)
    assert not list(tmp_path.rglob(f".{art.name}.unpacked"))


@pytest.mark.parametrize(
    ("members", "filename", "what"),
    [
        ({LOCK_FILENAME: b'{"version": 1, "artifacts": {}}', "ok.txt": b"x"}, "a.zip", "named like"),
        ({"a.zip": b"not the archive", "ok.txt": b"x"}, "a.zip", "would replace"),
        ({"dl/other.txt": b"x", "ok.txt": b"x"}, "dl/a.zip", "would replace"),  # the archive's own folder
        ({".b.unpacked": b"{}", "ok.txt": b"x"}, "a.zip", "named like"),
        ({"x.part": b"", "ok.txt": b"x"}, "a.zip", "named like"),
    ],
    ids=["lock-file", "the-archive", "folder-of-the-archive", "a-marker", "a-partial-file"],
)
def test_an_archive_entry_never_replaces_the_downloaders_files(server, tmp_path, members, filename, what):  # noqa: F811
    url = server.add("/a.zip", zip_bytes(members))
    # an earlier artifact's lock entry, which the archive must not wipe out
    other = artifact(name="other", urls=[server.add("/o.bin", b"other")], filename="o.bin")
    download(other, tmp_path, **FAST)
    art = artifact(name="a", urls=[url], filename=filename, unpack="zip", unpack_to=".", produces=("ok.txt",))
    with pytest.raises(UnsafeArchiveError, match=what) as error:
        download(art, tmp_path, **FAST)
    assert "moved aside" in str(error.value)
    assert_refused(tmp_path, art, filename)
    assert "other" in read_lock(tmp_path)
    assert not (tmp_path / "ok.txt").exists()


def test_a_folder_holding_another_artifacts_marker_is_not_replaced(server, tmp_path):  # noqa: F811
    first = artifact(name="first", urls=[server.add("/f.zip", zip_bytes({"VG/1.jpg": b"1"}))], filename="f.zip",
                     unpack="zip", unpack_to="data", produces=("data/VG",))  # fmt: skip
    download(first, tmp_path, **FAST)
    (tmp_path / "data" / "VG" / ".inner.unpacked").write_text("{}")  # a marker another artifact keeps there
    second = artifact(name="second", urls=[server.add("/s.zip", zip_bytes({"VG/2.jpg": b"2"}))],
                      filename="s.zip", unpack="zip", unpack_to="data", produces=("data/VG",))  # fmt: skip
    with pytest.raises(UnsafeArchiveError, match="would delete"):
        download(second, tmp_path, **FAST)
    assert (tmp_path / "data" / "VG" / ".inner.unpacked").exists()
    assert_refused(tmp_path, second, "s.zip")


def test_an_archive_entry_never_replaces_another_artifacts_file(server, tmp_path):  # noqa: F811
    other = artifact(name="other", urls=[server.add("/o.bin", b"other")], filename="o.bin")
    download(other, tmp_path, **FAST)
    members = {"o.bin": b"replaced", "ok.txt": b"x"}
    art = artifact(name="a", urls=[server.add("/a.zip", zip_bytes(members))], filename="a.zip",
                   unpack="zip", unpack_to=".", produces=("ok.txt",))  # fmt: skip
    with pytest.raises(UnsafeArchiveError, match=r"would replace .*o\.bin"):
        download(art, tmp_path, **FAST, others=[other, art])
    assert (tmp_path / "o.bin").read_bytes() == b"other"
    assert_refused(tmp_path, art, "a.zip")


@pytest.mark.parametrize("content", [b"neither zip nor tar", tar_bytes({"/etc/evil": b"x"})])
def test_a_refused_archive_is_moved_aside_and_not_locked(server, tmp_path, content):  # noqa: F811
    art = artifact(name="bad", urls=[server.add("/bad.tar.gz", content)], filename="bad.tar.gz",
                   unpack="auto", unpack_to="out", produces=("out/x",))  # fmt: skip
    # Downloaded without unpacking first: its checksum is recorded ...
    download(art, tmp_path, **FAST, unpack=False)
    assert "bad" in read_lock(tmp_path)
    # ... and forgotten when it turns out to be refused.
    with pytest.raises(ArchiveError, match="moved aside"):
        download(art, tmp_path, **FAST)
    assert_refused(tmp_path, art, "bad.tar.gz")
    # A later run fetches it again (and refuses it again), never trusting the refused copy.
    with pytest.raises(ArchiveError):
        download(art, tmp_path, **FAST)
    assert len(server.requests_for("/bad.tar.gz")) == 2


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    names=st.lists(
        st.sampled_from(
            [
                LOCK_FILENAME,
                "a.tar",
                "sub",
                "sub/a.tar",
                "x.part",
                ".a.unpacked",
                "ok",
                "ok/y",
                "../up",
                "/abs",
                "a/../../up",
                "link",
                ".a.unpacking-1",
            ]
        ),  # fmt: skip
        min_size=1,
        max_size=4,
        unique=True,
    )
)
def test_whatever_an_archive_holds_the_downloaders_files_survive(tmp_path_factory, names):
    from amc.download import unpack_archive

    dest = tmp_path_factory.mktemp("dest")
    (dest / "sub").mkdir()
    archive = dest / "sub" / "a.tar"
    lock = dest / LOCK_FILENAME
    lock.write_text(json.dumps({"version": 1, "artifacts": {}}))
    links = {"link": (tarfile.SYMTYPE, "../../outside")} if "link" in names else None
    archive.write_bytes(tar_bytes({n: b"hostile" for n in names if n != "link"}, links))
    before = {p: p.read_bytes() for p in (archive, lock)}
    try:
        unpack_archive(archive, dest, kind="tar", name="a", protected=[lock])
    except ArchiveError:  # refused (unsafe, or members that contradict each other)
        pass
    assert {p: p.read_bytes() for p in (archive, lock)} == before
    assert not (dest.parent / "up").exists() and not (dest.parent / "outside").exists()
