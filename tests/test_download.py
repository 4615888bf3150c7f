"""Tests of `amc download` against a real HTTP server on 127.0.0.1 (tests/http_fixtures.py).

Nothing here reaches the internet: every URL points at the local server, or at a
local port where nothing listens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import re
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from amc import download as dl
from amc.cli import main
from amc.download import (
    Artifact,
    DownloadError,
    ManifestError,
    ManualDownloadRequired,
    UnsafeArchiveError,
    download,
    load_manifest,
    read_lock,
)
from tests.http_fixtures import (
    FAST,
    Corrupt,
    Cut,
    FileServer,
    Stall,
    Status,
    WrongRange,
    artifact,
    refused_port,
    tar_bytes,
    zip_bytes,
)

DATA = random.Random(0).randbytes(200_000)
DATA_SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def sleeps(monkeypatch):
    """Record the back-off delays instead of sleeping."""
    delays: list[float] = []
    monkeypatch.setattr(dl.fetch.time, "sleep", delays.append)
    return delays


# --------------------------------------------------------------------------- plain downloads


def test_complete_download_is_verified_and_renamed_into_place(server, tmp_path):
    url = server.add("/blob.bin", DATA)
    result = download(artifact(urls=[url], sha256=DATA_SHA, size=len(DATA)), tmp_path, **FAST)

    target = tmp_path / "files/blob.bin"
    assert target.read_bytes() == DATA
    assert not (tmp_path / "files/blob.bin.part").exists()
    assert (result.downloaded, result.url, result.sha256, result.size) == (True, url, DATA_SHA, len(DATA))
    assert [r.status for r in server.requests_for("/blob.bin")] == [200]
    # A published checksum is not copied into the lock file.
    assert read_lock(tmp_path) == {}


def test_present_file_that_verifies_is_skipped(server, tmp_path):
    url = server.add("/blob.bin", DATA)
    art = artifact(urls=[url], sha256=DATA_SHA)
    download(art, tmp_path, **FAST)
    again = download(art, tmp_path, **FAST)
    assert not again.downloaded and again.sha256 == DATA_SHA
    assert len(server.requests_for("/blob.bin")) == 1


def test_connection_cut_mid_transfer_is_resumed_from_the_partial_file(server, tmp_path, sleeps):
    url = server.add("/blob.bin", DATA, plan=[Cut(after=50_000)])
    download(artifact(urls=[url], sha256=DATA_SHA), tmp_path, **FAST)

    assert (tmp_path / "files/blob.bin").read_bytes() == DATA
    first, second = server.requests_for("/blob.bin")
    assert first.range is None
    assert (second.range, second.status) == ("bytes=50000-", 206)


def test_partial_file_left_by_an_earlier_run_is_resumed(server, tmp_path):
    url = server.add("/blob.bin", DATA)
    part = tmp_path / "files/blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA[:12_345])

    download(artifact(urls=[url], sha256=DATA_SHA), tmp_path, **FAST)

    assert (tmp_path / "files/blob.bin").read_bytes() == DATA
    assert [r.range for r in server.requests_for("/blob.bin")] == ["bytes=12345-"]


def test_progress_lines_give_bytes_rate_and_time_left(caplog):
    now = [0.0]
    lines = dl.progress._ProgressLog("coco", total=10 * 2**30, done=2**30, interval=30, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="amc.download"):
        now[0] = 29.0
        lines.update(2**20)  # within the interval: nothing
        assert caplog.messages == []
        now[0] = 60.0
        lines.update(600 * 2**20 - 2**20)  # 600 MiB in the last 60 s: 10 MiB/s, 9.4 GiB to go
        lines.report(lines.done)  # the interval starts again: nothing
    assert caplog.messages == ["coco: 1.6 GiB of 10.0 GiB (16%), 10.0 MiB/s, about 14 min left"]
    unknown = dl.progress._ProgressLog("vg", total=None, done=0, interval=0, clock=lambda: now[0])
    now[0] += 4
    with caplog.at_level(logging.INFO, logger="amc.download"):
        unknown.update(2**21)
    assert caplog.messages[-1] == "vg: 2.0 MiB, 512.0 KiB/s"  # no total: no percentage, no time left


def test_without_a_bar_a_download_logs_progress_lines(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(dl.progress, "PROGRESS_LOG_INTERVAL_S", 0.0)  # a line per chunk instead of every 30 s
    url = server.add("/blob.bin", DATA)
    with caplog.at_level(logging.INFO, logger="amc.download"):
        download(artifact(urls=[url]), tmp_path, **FAST)  # progress=False: no bar
    lines = [
        m for m in caplog.messages if re.fullmatch(r"blob: .* of 195\.3 KiB \(\d+%\), .*/s, about .* left", m)
    ]
    assert lines and lines[-1].startswith("blob: 195.3 KiB of 195.3 KiB (100%)")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="amc.download"):
        download(artifact(urls=[url], filename="again.bin"), tmp_path, **{**FAST, "progress": True})
    assert not [m for m in caplog.messages if "KiB/s" in m]  # the bar shows it instead


def test_server_without_range_support_restarts_cleanly(server, tmp_path, sleeps):
    url = server.add("/blob.bin", DATA, support_range=False, plan=[Cut(after=70_000)])
    download(artifact(urls=[url], sha256=DATA_SHA), tmp_path, **FAST)

    # The second request asked to resume, got the whole file (200) and started over.
    assert [(r.range, r.status) for r in server.requests_for("/blob.bin")] == [
        (None, 200),
        ("bytes=70000-", 200),
    ]
    assert (tmp_path / "files/blob.bin").read_bytes() == DATA


def test_wrong_content_range_restarts_from_zero(server, tmp_path, sleeps):
    url = server.add("/blob.bin", DATA, plan=[Cut(after=40_000), WrongRange()])
    download(artifact(urls=[url], sha256=DATA_SHA), tmp_path, **FAST)

    assert [r.range for r in server.requests_for("/blob.bin")] == [None, "bytes=40000-", None]
    assert (tmp_path / "files/blob.bin").read_bytes() == DATA


def test_stalled_transfer_times_out_and_resumes(server, tmp_path, sleeps):
    url = server.add("/blob.bin", DATA, plan=[Stall(seconds=5)])
    download(artifact(urls=[url], sha256=DATA_SHA), tmp_path, **{**FAST, "timeout": 0.3})

    assert [r.range for r in server.requests_for("/blob.bin")] == [None, "bytes=16-"]
    assert (tmp_path / "files/blob.bin").read_bytes() == DATA


def test_corrupted_file_is_detected_deleted_and_fetched_again(server, tmp_path):
    url = server.add("/blob.bin", DATA, plan=[Corrupt()])
    art = artifact(urls=[url], sha256=DATA_SHA)

    with pytest.raises(DownloadError, match="sha256") as error:
        download(art, tmp_path, **FAST)
    assert url in str(error.value) and DATA_SHA in str(error.value)
    assert not (tmp_path / "files/blob.bin").exists()
    assert not (tmp_path / "files/blob.bin.part").exists()

    result = download(art, tmp_path, **FAST)  # the next attempt
    assert result.downloaded and (tmp_path / "files/blob.bin").read_bytes() == DATA


def test_stale_partial_file_failing_the_checksum_is_fetched_again_from_zero(server, tmp_path):
    url = server.add("/blob.bin", DATA)
    part = tmp_path / "files/blob.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)  # not a prefix of DATA

    download(artifact(urls=[url], sha256=DATA_SHA), tmp_path, **FAST)

    assert [r.range for r in server.requests_for("/blob.bin")] == ["bytes=1000-", None]
    assert (tmp_path / "files/blob.bin").read_bytes() == DATA


def test_server_errors_are_retried_with_exponential_backoff(server, tmp_path, sleeps):
    url = server.add("/blob.bin", DATA, plan=[Status(503), Status(500)])
    download(artifact(urls=[url], sha256=DATA_SHA), tmp_path, **{**FAST, "backoff": 0.01})

    assert [r.status for r in server.requests_for("/blob.bin")] == [503, 500, 200]
    assert sleeps == [0.01, 0.02]


def test_server_errors_give_up_after_the_retries(server, tmp_path, sleeps):
    url = server.add("/blob.bin", DATA, plan=[Status(502)] * 10)
    with pytest.raises(DownloadError, match="giving up after 2 retries.*502"):
        download(artifact(urls=[url]), tmp_path, **{**FAST, "retries": 2})
    assert len(server.requests_for("/blob.bin")) == 3
    assert not (tmp_path / "files/blob.bin").exists()


def test_not_found_is_reported_with_url_and_status_and_not_retried(server, tmp_path, sleeps):
    url = server.url("/missing.bin")
    with pytest.raises(DownloadError) as error:
        download(artifact(urls=[url]), tmp_path, **FAST)
    assert f"{url}: HTTP 404" in str(error.value)
    assert len(server.requests_for("/missing.bin")) == 1 and sleeps == []


def test_refused_connection_is_reported_clearly(tmp_path, sleeps):
    sock = refused_port()
    try:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/blob.bin"
        with pytest.raises(DownloadError) as error:
            download(artifact(urls=[url]), tmp_path, **{**FAST, "retries": 1})
    finally:
        sock.close()
    message = str(error.value)
    assert url in message and "refused" in message.lower()
    assert len(sleeps) == 1


def test_mirrors_are_tried_in_order(server, tmp_path, sleeps):
    gone = server.url("/gone.bin")
    broken = server.add("/broken.bin", DATA, plan=[Status(503)] * 10)
    good = server.add("/good.bin", DATA)
    result = download(
        artifact(urls=[gone, broken, good], sha256=DATA_SHA), tmp_path, **{**FAST, "retries": 1}
    )

    assert result.url == good
    assert [len(server.requests_for(p)) for p in ("/gone.bin", "/broken.bin", "/good.bin")] == [1, 2, 1]


def test_html_page_instead_of_the_file_is_refused(server, tmp_path):
    url = server.add("/blob.bin", b"<html>please log in</html>", content_type="text/html; charset=utf-8")
    with pytest.raises(DownloadError, match="HTML page"):
        download(artifact(urls=[url]), tmp_path, **FAST)
    assert read_lock(tmp_path) == {}


# --------------------------------------------------------------------------- lock file


def test_lock_file_records_the_first_download_and_enforces_it(server, tmp_path):
    url = server.add("/blob.bin", DATA)
    art = artifact(urls=[url])  # no published checksum
    download(art, tmp_path, **FAST)

    entry = read_lock(tmp_path)["blob"]
    assert (entry["sha256"], entry["size"], entry["url"]) == (DATA_SHA, len(DATA), url)

    # The upstream file changes (same size): a fresh download no longer matches the record.
    (tmp_path / "files/blob.bin").unlink()
    server.add("/blob.bin", DATA[::-1])
    with pytest.raises(DownloadError, match="lock file") as error:
        download(art, tmp_path, **FAST)
    assert "remove the entry 'blob'" in str(error.value)
    assert not (tmp_path / "files/blob.bin").exists()
    assert not (tmp_path / "files/blob.bin.part").exists()
    assert read_lock(tmp_path)["blob"]["sha256"] == DATA_SHA


def test_lock_file_checks_a_file_already_in_place(server, tmp_path):
    url = server.add("/blob.bin", DATA)
    art = artifact(urls=[url])
    download(art, tmp_path, **FAST)
    (tmp_path / "files/blob.bin").write_bytes(DATA[::-1])  # damaged on disk

    with pytest.raises(DownloadError, match=f"sha256 .* says {DATA_SHA}"):
        download(art, tmp_path, **FAST)
    assert len(server.requests_for("/blob.bin")) == 1


# --------------------------------------------------------------------------- unpacking


def test_zip_is_unpacked_once_and_idempotently(server, tmp_path):
    data = zip_bytes({"VG_100K/1.jpg": b"jpeg1", "VG_100K/2.jpg": b"jpeg2"})
    url = server.add("/images.zip", data)
    art = artifact(
        name="vg_images",
        urls=[url],
        filename="vg/images.zip",
        unpack="zip",
        unpack_to="vg",
        produces=("vg/VG_100K",),
    )
    first = download(art, tmp_path, **FAST)
    assert first.unpacked and (tmp_path / "vg/VG_100K/2.jpg").read_bytes() == b"jpeg2"
    marker = json.loads((tmp_path / "vg/.vg_images.unpacked").read_text())
    assert marker["entries"] == ["VG_100K"] and marker["sha256"] == hashlib.sha256(data).hexdigest()
    assert not list((tmp_path / "vg").glob(".vg_images.unpacking-*"))

    second = download(art, tmp_path, **FAST)
    assert not second.downloaded and not second.unpacked

    # An output removed by hand is unpacked again from the archive, without downloading.
    shutil.rmtree(tmp_path / "vg/VG_100K")
    third = download(art, tmp_path, **FAST)
    assert third.unpacked and not third.downloaded and (tmp_path / "vg/VG_100K/1.jpg").exists()

    # The archive may be deleted after unpacking: the marker stands for it.
    (tmp_path / "vg/images.zip").unlink()
    fourth = download(art, tmp_path, **FAST)
    assert fourth.path is None and not fourth.downloaded
    assert len(server.requests_for("/images.zip")) == 1


def test_zip_with_parent_member_is_refused(server, tmp_path):
    url = server.add("/evil.zip", zip_bytes({"ok.txt": b"fine", "../evil.txt": b"gotcha"}))
    art = artifact(
        urls=[url], filename="dl/evil.zip", unpack="zip", unpack_to="dl/out", produces=("dl/out/ok.txt",)
    )
    with pytest.raises(UnsafeArchiveError) as error:
        download(art, tmp_path, **FAST)
    assert "evil.zip" in str(error.value) and "'../evil.txt'" in str(error.value)
    assert not (tmp_path / "dl/evil.txt").exists() and not (tmp_path / "dl/out/ok.txt").exists()
    assert not (tmp_path / "dl/out/.blob.unpacked").exists()


@pytest.mark.parametrize(
    ("members", "links", "bad"),
    [
        ({"/etc/evil.txt": b"x"}, None, "/etc/evil.txt"),
        ({"a/../../evil.txt": b"x"}, None, "a/../../evil.txt"),
        ({}, {"link": (tarfile.SYMTYPE, "../../outside")}, "link"),
        ({}, {"sub/link": (tarfile.SYMTYPE, "/etc/passwd")}, "sub/link"),
        ({}, {"hard": (tarfile.LNKTYPE, "../outside")}, "hard"),
    ],
    ids=["absolute", "parent", "symlink-up", "symlink-absolute", "hardlink-up"],
)
def test_tar_with_escaping_member_is_refused(server, tmp_path, members, links, bad):
    url = server.add("/evil.tar.gz", tar_bytes({"ok.txt": b"fine", **members}, links))
    art = artifact(
        urls=[url],
        filename="dl/evil.tar.gz",
        unpack="tar.gz",
        unpack_to="dl/out",
        produces=("dl/out/ok.txt",),
    )
    with pytest.raises(UnsafeArchiveError) as error:
        download(art, tmp_path, **FAST)
    assert "evil.tar.gz" in str(error.value) and repr(bad) in str(error.value)
    # Nothing that looks complete: no outputs moved into place, no marker, no temp folder left.
    assert sorted(p.name for p in (tmp_path / "dl/out").iterdir()) == []


def test_tar_symlink_inside_the_destination_is_allowed(server, tmp_path):
    data = tar_bytes({"data/a.json": b"{}"}, {"data/b.json": (tarfile.SYMTYPE, "a.json")})
    url = server.add("/ok.tar.gz", data)
    art = artifact(
        urls=[url], filename="ok.tar.gz", unpack="auto", unpack_to="out", produces=("out/data/b.json",)
    )
    download(art, tmp_path, **FAST)
    assert (tmp_path / "out/data/b.json").read_bytes() == b"{}"


def test_archive_not_producing_the_declared_paths_is_an_error(server, tmp_path):
    url = server.add("/a.zip", zip_bytes({"other/x.txt": b"x"}))
    art = artifact(urls=[url], filename="a.zip", unpack="zip", unpack_to="out", produces=("out/expected",))
    with pytest.raises(DownloadError, match="out/expected"):
        download(art, tmp_path, **FAST)


def test_no_unpack_downloads_only(server, tmp_path):
    url = server.add("/a.zip", zip_bytes({"x/y.txt": b"y"}))
    art = artifact(urls=[url], filename="a.zip", unpack="zip", unpack_to="out", produces=("out/x",))
    result = download(art, tmp_path, **FAST, unpack=False)
    assert result.downloaded and not result.unpacked and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the shipped manifest

EXPECTED_ARTIFACTS = {
    "albef_14m",
    "albef_4m",
    "albef_data",
    "vg_images",
    "vg_images2",
    "vg_image_data",
    "vg_region_descriptions",
    "vg_attributes",
    "vg_relationships",
    "vg_objects",
    "coco_train2014",
    "refcoco_plus",
    "flickr30k_entities_annotations",
    "flickr30k_entities_train",
    "flickr30k_entities_val",
    "flickr30k_entities_test",
    "flickr30k_images",
    "bert_vocab",
    "amc_vg_descriptions",
    "amc_vg_attributes_spatial",
    "amc_vg_attributes",
    "amc_best_flickr",
    "amc_best_refcoco",
    "amc_best_refclef",
}
CHECKPOINT_FOLDER = "https://drive.google.com/drive/folders/1syngIWXbySzbcb7lZnmoL7_-H6RAeb3H"
ANNOTATION_FOLDER = "https://drive.google.com/drive/folders/1XhFVjJ2cm2HNeNVOZrUrPG_MpprHLWgv"


def test_shipped_manifest_validates_and_names_every_artifact():
    manifest = load_manifest()
    assert set(manifest) == EXPECTED_ARTIFACTS

    urls = {name: art.urls for name, art in manifest.items()}
    assert urls["albef_14m"] == ("https://storage.googleapis.com/sfr-pcl-data-research/ALBEF/ALBEF.pth",)
    assert urls["albef_4m"] == ("https://storage.googleapis.com/sfr-pcl-data-research/ALBEF/ALBEF_4M.pth",)
    assert urls["coco_train2014"] == ("http://images.cocodataset.org/zips/train2014.zip",)
    assert urls["refcoco_plus"] == ("https://bvisionweb1.cs.unc.edu/licheng/referit/data/refcoco+.zip",)
    assert urls["bert_vocab"] == (
        "https://huggingface.co/google-bert/bert-base-uncased/resolve/main/vocab.txt",
    )
    for vg in ("image_data", "region_descriptions", "attributes", "relationships", "objects"):
        assert urls[f"vg_{vg}"] == (
            f"https://homes.cs.washington.edu/~ranjay/visualgenome/data/dataset/{vg}.json.zip",
        )
    for split in ("train", "val", "test"):
        assert urls[f"flickr30k_entities_{split}"] == (
            f"https://raw.githubusercontent.com/BryanPlummer/flickr30k_entities/master/{split}.txt",
        )

    flickr = manifest["flickr30k_images"]
    assert flickr.is_manual and flickr.urls == ()
    assert "https://shannon.cs.illinois.edu/DenotationGraph/" in flickr.manual
    assert flickr.filename.endswith("flickr30k-images.tar.gz")
    # No checksum is invented: every one is left to the lock file.
    assert all(art.sha256 is None for art in manifest.values())

    # The authors' files: only the Google Drive folders are public, each entry names folder + file.
    released = {
        "amc_vg_descriptions": (ANNOTATION_FOLDER, "vg_descriptions.json"),
        "amc_vg_attributes_spatial": (ANNOTATION_FOLDER, "vg_attributes_spatial.json"),
        "amc_vg_attributes": (ANNOTATION_FOLDER, "vg_attributes.json"),
        "amc_best_flickr": (CHECKPOINT_FOLDER, "best_flickr.pth"),
        "amc_best_refcoco": (CHECKPOINT_FOLDER, "best_refcoco.pth"),
        "amc_best_refclef": (CHECKPOINT_FOLDER, "best_refclef.pth"),
    }
    for name, (folder, file) in released.items():
        art = manifest[name]
        assert art.source == "google_drive" and art.urls == ()
        assert (art.google_drive.folder, art.google_drive.file) == (folder, file)
        assert art.filename == f"amc/{file}" and art.produces == (f"amc/{file}",) and art.unpack == "none"
        assert art.size is None and art.sha256 is None


# Tiny archives in the real layouts, unpacked with the shipped entries' own paths.
REAL_LAYOUTS = {
    "albef_data": tar_bytes({"data/refcoco+_train.json": b"[]", "data/refcoco+/dets.json": b"{}"}),
    "vg_images": zip_bytes({"VG_100K/1.jpg": b"jpeg"}),
    "vg_images2": zip_bytes({"VG_100K_2/2.jpg": b"jpeg"}),
    "vg_region_descriptions": zip_bytes({"region_descriptions.json": b"[]"}),
    "vg_image_data": zip_bytes({"image_data.json": b"[]"}),
    "coco_train2014": zip_bytes({"train2014/COCO_train2014_000000000009.jpg": b"jpeg"}),
    "refcoco_plus": zip_bytes({"refcoco+/refs(unc).p": b"pickle", "refcoco+/instances.json": b"{}"}),
    "flickr30k_entities_annotations": zip_bytes(
        {"Annotations/1000092795.xml": b"<annotation/>", "Sentences/1000092795.txt": b"[/EN#1/people A man]"}
    ),
    "flickr30k_entities_test": b"1000092795\n",
    "bert_vocab": b"[PAD]\n[UNK]\n",
}


@pytest.mark.parametrize("name", sorted(REAL_LAYOUTS))
def test_shipped_entries_produce_their_outputs_from_real_layouts(server, tmp_path, name):
    shipped = load_manifest()[name]
    url = server.add(f"/{name}", REAL_LAYOUTS[name])
    result = download(dataclasses.replace(shipped, urls=(url,)), tmp_path, **FAST)
    assert all(path.exists() for path in result.produces)


def test_manifest_errors_name_the_file_and_entry(tmp_path):
    good = {
        "name": "a",
        "urls": ["http://127.0.0.1/a"],
        "filename": "a.bin",
        "unpack": "none",
        "produces": ["a.bin"],
        "description": "d",
        "license": "l",
    }
    cases = [
        ({"unpack": "rar"}, "'unpack' must be one of"),
        ({"sha256": "abc"}, "'sha256' must be 64 hex digits"),
        ({"filename": "../a.bin"}, "'filename' must be a relative path"),
        ({"urls": []}, "exactly one source"),
        ({"unpack": "zip"}, "'unpack_to' is needed"),
        ({"colour": "red"}, "unknown field"),
        ({"size": -1}, "'size'"),
        ({"local": "x.bin"}, "exactly one source"),
        ({"urls": [], "google_drive": {"folder": ANNOTATION_FOLDER}}, "'google_drive' must be a mapping"),
        (
            {"urls": [], "google_drive": {"folder": "https://example.org/folders/x", "file": "a"}},
            "google_drive.folder must be a link",
        ),
        (
            {"urls": [], "google_drive": {"folder": ANNOTATION_FOLDER, "file": "sub/a.json"}},
            "google_drive.file must be a file name",
        ),
        ({"urls": [], "local": ""}, "'local' must be the path"),
    ]
    for change, message in cases:
        path = tmp_path / "manifest.yaml"
        path.write_text(yaml.safe_dump({"artifacts": [good, {**good, "name": "b", **change}]}))
        with pytest.raises(ManifestError, match=message) as error:
            load_manifest(path)
        assert str(error.value).startswith(f"{path}: artifact #2 (b)")

    path.write_text(yaml.safe_dump({"artifacts": [good, good]}))
    with pytest.raises(ManifestError, match="appears twice"):
        load_manifest(path)


# --------------------------------------------------------------------------- manual artifact and CLI


def write_manifest(path: Path, artifacts: list[Artifact]) -> Path:
    entries = []
    for art in artifacts:
        entry = dataclasses.asdict(art)
        entry["urls"], entry["produces"] = list(art.urls), list(art.produces)
        for key in ("manual", "google_drive", "local"):
            if entry[key] is None:
                del entry[key]
        entries.append(entry)
    path.write_text(yaml.safe_dump({"version": 1, "artifacts": entries}, sort_keys=False))
    return path


def test_manual_artifact_stops_with_instructions_then_continues(tmp_path, caplog):
    manifest = tmp_path / "manifest.yaml"
    write_manifest(manifest, [load_manifest()["flickr30k_images"]])
    dest = tmp_path / "raw"
    argv = ["download", "flickr30k_images", "--dest", str(dest), "--manifest", str(manifest), "--no-progress"]

    with caplog.at_level(logging.ERROR):
        assert main(argv) == 3
    assert "https://shannon.cs.illinois.edu/DenotationGraph/" in caplog.text
    assert str(dest / "flickr30k/flickr30k-images.tar.gz") in caplog.text

    archive = dest / "flickr30k/flickr30k-images.tar.gz"
    archive.parent.mkdir(parents=True)
    archive.write_bytes(tar_bytes({"flickr30k-images/1000092795.jpg": b"jpeg"}))
    assert main(argv) == 0
    assert (dest / "flickr30k/flickr30k-images/1000092795.jpg").exists()
    assert read_lock(dest)["flickr30k_images"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()


def test_manual_artifact_supplied_as_an_unpacked_folder(tmp_path):
    art = load_manifest()["flickr30k_images"]
    with pytest.raises(ManualDownloadRequired):
        download(art, tmp_path, **FAST)
    (tmp_path / "flickr30k/flickr30k-images").mkdir(parents=True)
    assert download(art, tmp_path, **FAST).path is None


def test_cli_end_to_end(server, tmp_path, caplog, capsys):
    arts = [
        artifact("vocab", [server.add("/vocab.txt", b"[PAD]\n")], "bert/vocab.txt"),
        artifact(
            "anno",
            [server.add("/anno.zip", zip_bytes({"Sentences/1.txt": b"s"}))],
            "f30k/annotations.zip",
            unpack="zip",
            unpack_to="f30k",
            produces=("f30k/Sentences",),
        ),
    ]
    manifest = write_manifest(tmp_path / "mirror.yaml", arts)
    dest = tmp_path / "raw"
    common = ["--dest", str(dest), "--manifest", str(manifest), "--no-progress"]

    assert main(["download", "vocab", "anno", *common]) == 0
    assert (dest / "bert/vocab.txt").read_bytes() == b"[PAD]\n"
    assert (dest / "f30k/Sentences/1.txt").exists()
    assert set(read_lock(dest)) == {"vocab", "anno"}
    assert main(["download", "vocab", "anno", *common]) == 0  # idempotent
    assert len(server.requests) == 2

    assert main(["download", "--list", "--manifest", str(manifest)]) == 0
    assert "vocab" in capsys.readouterr().out

    with caplog.at_level(logging.ERROR):
        assert main(["download", "nothing", *common]) == 2
    assert "no artifact named nothing" in caplog.text

    sock = refused_port()
    try:
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/x"
        write_manifest(manifest, [artifact("dead", [dead], "x")])
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(["download", "dead", *common, "--retries", "0"]) == 2
    finally:
        sock.close()
    assert dead in caplog.text and "refused" in caplog.text.lower()
    assert "Traceback" not in caplog.text


# --------------------------------------------------------------------------- Google Drive (gdown replaced by a stand-in)


class FakeDrive:
    """gdown's folder listing and file download, served from the tests' local HTTP server.

    ``files`` maps a file name in the folder to (id, bytes); ``fail_list``/``fail_download`` make
    the calls raise what gdown raises. Every call is recorded.
    """

    def __init__(self, server: FileServer, files: dict[str, tuple[str, bytes]]):
        self.server, self.files = server, files
        self.fail_list: Exception | None = None
        self.list_result: object = "listing"
        self.fail_download: Exception | None = None
        self.calls: list[tuple[str, dict]] = []
        for _name, (file_id, data) in files.items():
            server.add(f"/uc/{file_id}", data)

    def install(self, monkeypatch) -> FakeDrive:
        import gdown

        monkeypatch.setattr(gdown, "download_folder", self.download_folder)
        monkeypatch.setattr(gdown, "download", self.download)
        return self

    def download_folder(self, url=None, **kwargs):
        from gdown.download_folder import GoogleDriveFileToDownload

        self.calls.append(("list", {"url": url, **kwargs}))
        assert kwargs.get("skip_download") is True, "the folder must only be listed, never downloaded whole"
        if self.fail_list is not None:
            raise self.fail_list
        if self.list_result != "listing":
            return self.list_result
        return [GoogleDriveFileToDownload(i, name, f"/nowhere/{name}") for name, (i, _) in self.files.items()]

    def download(self, id=None, output=None, quiet=False, resume=False, **kwargs):
        self.calls.append(("download", {"id": id, "output": output, "resume": resume, **kwargs}))
        if self.fail_download is not None:
            raise self.fail_download
        import urllib.request

        data = urllib.request.urlopen(self.server.url(f"/uc/{id}")).read()
        tmp = Path(output + "XYZ.part")  # gdown writes a .part beside the output, then moves it
        tmp.write_bytes(data)
        tmp.replace(output)
        return output


def drive_artifact(name: str = "best", file: str = "best_flickr.pth") -> Artifact:
    return artifact(
        name,
        (),
        f"amc/{file}",
        google_drive=dl.GoogleDriveFile(CHECKPOINT_FOLDER, file),
    )


@pytest.fixture
def drive(server, monkeypatch):
    files = {
        "best_flickr.pth": ("id-flickr", DATA),
        "best_refcoco.pth": ("id-refcoco", DATA[::-1]),
        "best_refclef.pth": ("id-refclef", b"refclef"),
    }
    return FakeDrive(server, files).install(monkeypatch)


def test_google_drive_file_is_found_in_the_folder_downloaded_and_locked(drive, tmp_path):
    result = download(drive_artifact(), tmp_path, **FAST)

    assert (tmp_path / "amc/best_flickr.pth").read_bytes() == DATA
    assert sorted(p.name for p in (tmp_path / "amc").iterdir()) == ["best_flickr.pth"]  # no staging left
    (kind, listing), (kind2, fetch) = drive.calls
    assert (kind, listing["url"], kind2) == ("list", CHECKPOINT_FOLDER, "download")
    assert fetch["id"] == "id-flickr" and fetch["resume"] is True
    assert Path(fetch["output"]).parent == tmp_path / "amc"  # resumable partial files stay beside the target
    assert result.downloaded and result.url == "https://drive.google.com/uc?id=id-flickr"
    entry = read_lock(tmp_path)["best"]
    assert (entry["sha256"], entry["size"], entry["url"]) == (DATA_SHA, len(DATA), result.url)

    again = download(drive_artifact(), tmp_path, **FAST)  # present and verified: gdown is not called
    assert not again.downloaded and len(drive.calls) == 2


def test_google_drive_download_without_a_bar_logs_progress_lines(drive, tmp_path, monkeypatch, caplog):
    import gdown

    monkeypatch.setattr(dl.progress, "PROGRESS_LOG_INTERVAL_S", 0.01)

    def slow_download(id=None, output=None, quiet=False, resume=False, **kwargs):
        part = Path(output + "XYZ.part")  # gdown's partial file, growing
        for start in range(0, len(DATA), 50_000):
            with part.open("ab") as handle:
                handle.write(DATA[start : start + 50_000])
            time.sleep(0.05)
        part.replace(output)
        return output

    monkeypatch.setattr(gdown, "download", slow_download)
    with caplog.at_level(logging.INFO, logger="amc.download"):
        download(drive_artifact(), tmp_path, **FAST)
    sizes = [m for m in caplog.messages if re.fullmatch(r"best: [\d.]+ KiB, [\d.]+ [KM]i?B/s", m)]
    assert len(sizes) >= 2, caplog.messages  # the .part file watched while gdown writes it


def test_google_drive_download_is_checked_against_the_lock(drive, tmp_path):
    download(drive_artifact(), tmp_path, **FAST)
    (tmp_path / "amc/best_flickr.pth").unlink()
    drive.files["best_flickr.pth"] = ("id-flickr", DATA[::-1])
    drive.server.add("/uc/id-flickr", DATA[::-1])  # the upstream file changed
    with pytest.raises(DownloadError, match="lock file") as error:
        download(drive_artifact(), tmp_path, **FAST)
    assert "remove the entry 'best'" in str(error.value)
    assert not list((tmp_path / "amc").iterdir())  # the mismatching file was deleted
    assert read_lock(tmp_path)["best"]["sha256"] == DATA_SHA


def _failures():
    from gdown.exceptions import FileURLRetrievalError

    quota = FileURLRetrievalError("Too many users have viewed or downloaded this file recently.")
    return {
        "no-network": ("fail_list", ConnectionError("Failed to resolve 'drive.google.com'"), "resolve"),
        "folder-unlisted": ("list_result", None, "could not list the folder"),
        "file-removed": ("list_result", [], "could not list the folder"),
        "quota": ("fail_download", quota, "Too many users"),
    }


@pytest.mark.parametrize("case", ["no-network", "folder-unlisted", "file-removed", "quota"])
def test_google_drive_failures_stop_with_manual_instructions(drive, tmp_path, case):
    attribute, value, reason = _failures()[case]
    setattr(drive, attribute, value)
    with pytest.raises(ManualDownloadRequired) as error:
        download(drive_artifact(), tmp_path, **FAST)
    message = str(error.value)
    assert reason in message
    assert CHECKPOINT_FOLDER in message and "'best_flickr.pth'" in message
    assert str(tmp_path / "amc/best_flickr.pth") in message
    assert not (tmp_path / "amc/best_flickr.pth").exists()


def test_google_drive_folder_without_the_file_names_what_it_holds(drive, tmp_path):
    del drive.files["best_flickr.pth"]
    with pytest.raises(ManualDownloadRequired, match="does not list 'best_flickr.pth'") as error:
        download(drive_artifact(), tmp_path, **FAST)
    assert "best_refcoco.pth" in str(error.value)


def test_google_drive_html_page_is_not_kept(drive, tmp_path):
    drive.server.add("/uc/id-flickr", b"<!DOCTYPE html><html>Google Drive - Quota exceeded</html>")
    with pytest.raises(ManualDownloadRequired, match="HTML page"):
        download(drive_artifact(), tmp_path, **FAST)
    assert not list((tmp_path / "amc").iterdir())
    assert read_lock(tmp_path) == {}


def test_google_drive_file_put_in_place_by_hand_is_accepted_locked_and_then_enforced(drive, tmp_path, caplog):
    from gdown.exceptions import FileURLRetrievalError

    drive.fail_download = FileURLRetrievalError(
        "Too many users have viewed or downloaded this file recently."
    )
    manifest = write_manifest(tmp_path / "manifest.yaml", [load_manifest()["amc_best_refcoco"]])
    dest = tmp_path / "raw"
    argv = ["download", "amc_best_refcoco", "--dest", str(dest), "--manifest", str(manifest), "--no-progress"]

    with caplog.at_level(logging.ERROR):
        assert main(argv) == 3  # the manual exit status: instructions, not a crash
    assert CHECKPOINT_FOLDER in caplog.text and "'best_refcoco.pth'" in caplog.text
    assert str(dest / "amc/best_refcoco.pth") in caplog.text and "Too many users" in caplog.text

    by_hand = dest / "amc/best_refcoco.pth"
    by_hand.write_bytes(DATA)
    calls = len(drive.calls)
    assert main(argv) == 0
    assert len(drive.calls) == calls  # nothing fetched: the file in place is verified and locked
    assert read_lock(dest)["amc_best_refcoco"]["sha256"] == DATA_SHA

    by_hand.write_bytes(DATA[::-1])  # later replaced by something else
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert f"says {DATA_SHA}" in caplog.text and "checksums.lock.json" in caplog.text


def test_write_manifest_round_trips_google_drive_and_local_entries(tmp_path):
    arts = [load_manifest()["amc_best_flickr"], artifact("copy", (), "a/b.pth", local="x/y.pth")]
    assert list(load_manifest(write_manifest(tmp_path / "m.yaml", arts)).values()) == arts


# --------------------------------------------------------------------------- local files


def test_local_file_is_copied_verified_and_locked(tmp_path):
    source = tmp_path / "export/model.pth"
    source.parent.mkdir()
    source.write_bytes(DATA)
    art = artifact("released", (), "amc/best.pth", local=str(source))
    result = download(art, tmp_path / "raw", **FAST)
    assert (tmp_path / "raw/amc/best.pth").read_bytes() == DATA and result.downloaded
    assert read_lock(tmp_path / "raw")["released"]["sha256"] == DATA_SHA
    assert read_lock(tmp_path / "raw")["released"]["url"] == source.resolve().as_uri()

    # The source changes (the workflow re-exported it): refused against the lock unless --update-lock.
    (tmp_path / "raw/amc/best.pth").unlink()
    source.write_bytes(DATA[::-1])
    with pytest.raises(DownloadError, match="lock file"):
        download(art, tmp_path / "raw", **FAST)
    assert not (tmp_path / "raw/amc/best.pth").exists()
    download(art, tmp_path / "raw", **FAST, update_lock=True)
    assert read_lock(tmp_path / "raw")["released"]["sha256"] == hashlib.sha256(DATA[::-1]).hexdigest()

    missing = artifact("gone", (), "amc/gone.pth", local=str(tmp_path / "nope.pth"))
    with pytest.raises(DownloadError, match="local source .*nope.pth does not exist"):
        download(missing, tmp_path / "raw", **FAST)
