"""The released AMC training format: one image's VG phrases as the AMC authors' files hold them."""

from __future__ import annotations

RELEASED_VG_FILES = ("vg_descriptions.json", "vg_attributes_spatial.json", "vg_attributes.json")


def released_vg_entries(image: str, regions: list, objects: list, relationships: list) -> dict[str, list]:
    """One image's VG phrases as the AMC authors' files hold them: ``{"image", "caption", "bbox"}``.

    A pure function of the raw-VG entries (no random draws, so the raw files do not change):
    region descriptions of the same box become one entry with a list of captions; attribute
    phrases (``"<attribute> <name>"``) and relation phrases (``"<subject> <predicate> <object>"``,
    the subject's box) shared by several objects become one entry with several boxes.
    """

    def xyxy(x, y, w, h) -> list:
        return [x, y, x + w, y + h]

    by_box: dict[tuple, list[str]] = {}
    for region in regions:
        by_box.setdefault(
            tuple(xyxy(region["x"], region["y"], region["width"], region["height"])), []
        ).append(region["phrase"])
    descriptions = [
        {"image": image, "caption": texts[0] if len(texts) == 1 else texts, "bbox": [list(box)]}
        for box, texts in by_box.items()
    ]

    def grouped(pairs) -> list[dict]:
        boxes: dict[str, list] = {}
        for text, box in pairs:
            if box not in boxes.setdefault(text, []):
                boxes[text].append(box)
        return [{"image": image, "caption": text, "bbox": found} for text, found in boxes.items()]

    attribute_phrases = [
        (f"{attribute} {obj['names'][0]}", xyxy(obj["x"], obj["y"], obj["w"], obj["h"]))
        for obj in objects
        for attribute in obj["attributes"]
    ]
    relation_phrases = [
        (
            f"{r['subject']['name']} {r['predicate']} {r['object']['name']}",
            xyxy(r["subject"]["x"], r["subject"]["y"], r["subject"]["w"], r["subject"]["h"]),
        )
        for r in relationships
    ]
    return {
        "vg_descriptions.json": descriptions,
        "vg_attributes_spatial.json": grouped(relation_phrases),
        "vg_attributes.json": grouped(attribute_phrases),
    }
