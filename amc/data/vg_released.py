"""Reader of the released AMC training data: the authors' Visual Genome phrase files.

The released code trains on three JSON files the authors made from Visual Genome
(``configs/Pretrain.yaml``, ``train_file``): ``vg_descriptions.json``,
``vg_attributes_spatial.json`` and ``vg_attributes.json``. Each is a JSON list of
``{"image": path relative to the VG image root, "caption": str or [str, ...],
"bbox": [[x1, y1, x2, y2], ...]}``.

What the released ``dataset/caption_dataset.py`` does per sample, and how the records keep it:

* One record per entry, so an epoch has as many samples as the release's. The record holds ALL
  the entry's boxes and (in ``captions``, when there are several) all its captions;
  :class:`~amc.data.datasets.PhraseBoxDataset` draws one box, then one caption, per sample.
* Each box is clipped to the image as released: x1, y1 to [0, w-1] / [0, h-1], x2, y2 to
  [1, w] / [1, h], then cast to int. The image size comes from the image file's header (the
  release reads it from the decoded image).
* Empty boxes (x1 >= x2 or y1 >= y2 after clipping): the release redraws while the entry has
  several boxes, which is rejection sampling, so its final box is uniform among the entry's
  NON-EMPTY boxes; keeping only the non-empty boxes and drawing uniformly among them gives the
  same distribution. When ALL boxes are empty, the release keeps the drawn one (one box) or
  loops forever (several); we keep them all with the release's 1-pixel rule (x2 = x1 + 1,
  y2 = y1 + 1). Note that the release applies that rule only to the box it hands to
  albumentations: its mask was already drawn from the empty box and is all zero.
* Nothing else is dropped by the release. Entries it could not train on either (no box, no
  usable number, no caption, no image) are skipped here and counted by reason.

The stored image paths may come from the authors' machine (their README asks users to fix
them), so an image is looked up under the VG image root as ``<image>``, then as its last two
path parts (``VG_100K/1.jpg``), then as its file name under ``VG_100K/`` or ``VG_100K_2/``.

Record ids are ``vg/<file name without .json>/<entry index>``. The entries carry no COCO or
Flickr id, so ``exclude_*_ids`` need VG's ``image_data.json`` to map the VG image id (the image
file's name) to them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from amc.data import Problems, box_problem
from amc.data.images import ImageChecker, ImageReadError
from amc.io import DataError, read_json
from amc.records import Record

log = logging.getLogger(__name__)

DATASET = "vg"
FILES = ("vg_descriptions.json", "vg_attributes_spatial.json", "vg_attributes.json")
IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")


def image_candidates(images: Path, name: str) -> list[Path]:
    """Where the image of an entry may be, in the order they are tried."""
    stored = PurePosixPath(name.replace("\\", "/"))
    parts = stored.parts
    candidates = [Path(stored) if stored.is_absolute() else images / stored]
    if len(parts) >= 2:
        candidates.append(images / parts[-2] / parts[-1])
    candidates += [images / folder / parts[-1] for folder in IMAGE_FOLDERS]
    return list(dict.fromkeys(candidates))


def clip_box(box: list[float], width: int, height: int) -> list[int]:
    """The released clipping: x1, y1 to [0, w-1] / [0, h-1], x2, y2 to [1, w] / [1, h], then int."""
    x1, y1, x2, y2 = box
    return [
        int(min(width - 1, max(0, x1))),
        int(min(height - 1, max(0, y1))),
        int(min(width, max(1, x2))),
        int(min(height, max(1, y2))),
    ]


def _is_empty(box: list[int]) -> bool:
    return box[0] >= box[2] or box[1] >= box[3]


def _one_pixel(box: list[int]) -> list[int]:
    """The released rule for a box still empty: x2 = x1 + 1, y2 = y1 + 1 where needed."""
    x1, y1, x2, y2 = box
    return [x1, y1, x1 + 1 if x1 >= x2 else x2, y1 + 1 if y1 >= y2 else y2]


def _vg_image_id(path: Path) -> str | None:
    return path.stem if path.stem.isdigit() else None


def load_eval_ids_of_vg_images(image_data: str | os.PathLike) -> dict[str, tuple[str | None, str | None]]:
    """VG image id -> (coco_id, flickr_id), from VG's ``image_data.json``."""
    entries = read_json(image_data)
    if not isinstance(entries, list):
        raise DataError(f"{image_data}: expected a JSON list of images")
    ids = {}
    for number, entry in enumerate(entries):
        try:
            image_id = entry["image_id"] if "image_id" in entry else entry["id"]
        except (KeyError, TypeError):
            raise DataError(f"{image_data}: entry {number} has no image_id") from None
        coco_id, flickr_id = entry.get("coco_id"), entry.get("flickr_id")
        ids[str(image_id)] = (
            None if coco_id is None else str(coco_id),
            None if flickr_id is None else str(flickr_id),
        )
    return ids


def read_vg_released(
    root: str | os.PathLike,
    images: str | os.PathLike,
    files: Iterable[str | os.PathLike] | None = None,
    exclude_coco_ids: Iterable[str] = (),
    exclude_flickr_ids: Iterable[str] = (),
    image_data: str | os.PathLike | None = None,
    problems: Problems | None = None,
) -> list[Record]:
    """Training records from the released phrase files (``files``, default :data:`FILES` in ``root``).

    ``images`` is the VG image root; every image's header is read (for the size the boxes are
    clipped to). ``exclude_*_ids`` need ``image_data`` (VG's ``image_data.json``).
    """
    root, images = Path(root), Path(images)
    problems = problems or Problems()
    paths = (
        [Path(f) if Path(f).is_absolute() else root / f for f in files]
        if files
        else [root / f for f in FILES]
    )
    if missing := [p for p in paths if not p.is_file()]:
        raise DataError(
            f"vg (released format): {', '.join(map(str, missing))} not found; the released files are "
            f"{', '.join(FILES)} (or name them with --files)"
        )
    exclude_coco, exclude_flickr = {str(i) for i in exclude_coco_ids}, {str(i) for i in exclude_flickr_ids}
    eval_ids: dict[str, tuple[str | None, str | None]] = {}
    if exclude_coco or exclude_flickr:
        if image_data is None:
            raise DataError(
                "vg (released format): excluding evaluation images needs VG's image_data.json "
                "(--image-data): the released entries carry no COCO or Flickr id"
            )
        eval_ids = load_eval_ids_of_vg_images(image_data)

    checker = ImageChecker()
    resolved: dict[str, Path | ImageReadError] = {}
    records: list[Record] = []
    for path in paths:
        entries = read_json(path)
        if not isinstance(entries, list):
            raise DataError(
                f"{path}: expected a JSON list of {{image, caption, bbox}}, got {type(entries).__name__}"
            )
        stem = path.name.removesuffix(".json")
        for index, entry in enumerate(tqdm(entries, desc=f"vg {stem}", unit="entry", disable=None)):
            where = f"{path}: entry {index}"
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not entry["image"]:
                raise DataError(f"{where}: expected an object with a non-empty 'image' path")
            texts = _captions(entry, where, problems)
            if texts is None:
                continue
            image = _resolve(entry["image"], images, resolved, checker, where, problems)
            if image is None:
                continue
            width, height = checker.size(image)
            boxes = _boxes(entry, width, height, where, problems)
            if boxes is None:
                continue
            vg_id = _vg_image_id(image)
            if eval_ids:
                coco_id, flickr_id = eval_ids.get(vg_id, (None, None)) if vg_id else (None, None)
                if vg_id not in eval_ids:
                    problems.note(
                        "image not in image_data.json (cannot be matched to an evaluation image; kept)"
                    )
                elif coco_id in exclude_coco or flickr_id in exclude_flickr:
                    problems.note("image shared with an evaluation set (excluded)")
                    continue
            records.append(
                Record(
                    id=f"{DATASET}/{stem}/{index}",
                    dataset=DATASET,
                    split="train",
                    image=str(image),
                    width=width,
                    height=height,
                    phrase=texts[0],
                    boxes=boxes,
                    image_id=vg_id,
                    captions=texts if len(texts) > 1 else [],
                )
            )
    return records


def _captions(entry: dict, where: str, problems: Problems) -> list[str] | None:
    """The entry's non-empty captions (a str caption is a list of one), or None when it has none."""
    caption = entry.get("caption")
    texts = caption if isinstance(caption, list) else [caption]
    if caption is None or not all(isinstance(t, str) for t in texts):
        problems.bad(
            "malformed caption", f"{where}: caption {caption!r} is not a string or a list of strings"
        )
        return None
    kept = [t for t in texts if t.strip()]
    if not kept:
        problems.bad("empty phrase", f"{where}: no non-empty caption")
        return None
    if len(kept) < len(texts):
        problems.note("empty captions dropped from entries with other captions", len(texts) - len(kept))
    return kept


def _resolve(
    name: str,
    images: Path,
    resolved: dict[str, Path | ImageReadError],
    checker: ImageChecker,
    where: str,
    problems: Problems,
) -> Path | None:
    """The entry's image file with a readable header, or None (counted) when there is none."""
    if name not in resolved:
        candidates = image_candidates(images, name)
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            tried = ", ".join(map(str, candidates))
            resolved[name] = ImageReadError(f"image {name!r} not found (tried {tried})", "image missing")
        else:
            resolved[name] = checker.problem(found) or found
    outcome = resolved[name]
    if isinstance(outcome, ImageReadError):
        problems.bad(outcome.reason, f"{where}: {outcome}")
        return None
    return outcome


def _boxes(entry: dict, width: int, height: int, where: str, problems: Problems) -> list[list[int]] | None:
    """The entry's boxes clipped as released, empty ones handled as the module docstring says."""
    raw = entry.get("bbox")
    if not isinstance(raw, list) or not raw:
        problems.bad("no boxes", f"{where}: 'bbox' is {raw!r}, not a non-empty list of boxes")
        return None
    clipped = []
    for number, box in enumerate(raw):
        if (reason := box_problem(box)) in ("malformed box", "non-numeric box"):
            problems.bad(
                reason, f"{where}: box {number} {box!r}: {reason} (dropped; the entry's other boxes are kept)"
            )
            continue
        clipped.append(clip_box(box, width, height))
    if not clipped:
        problems.bad("no usable box", f"{where}: none of its {len(raw)} boxes holds four finite numbers")
        return None
    non_empty = [box for box in clipped if not _is_empty(box)]
    if not non_empty:
        problems.note("entries whose boxes are all empty after clipping (1-pixel boxes)")
        return [_one_pixel(box) for box in clipped]
    if len(non_empty) < len(clipped):
        problems.note(
            "empty boxes (after clipping) dropped from entries with other boxes",
            len(clipped) - len(non_empty),
        )
    return non_empty
