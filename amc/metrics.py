"""Pointing accuracy, the miss decomposition, the energy in the boxes and ALBEF's box metric.

The pointing protocol of the released evaluation (docs/model.md, "GradCAM"): the GradCAM map at grid resolution is
upsampled to the ORIGINAL image size with bicubic interpolation
(``align_corners=False``), the point is the first maximum in row-major order,
and a case is a hit when the point lies STRICTLY inside any of its boxes.
The energy (:func:`energy_in_boxes`) is the share of the same upsampled map's
positive mass on the pixels a hit may fall on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Box = Sequence[float]


def upsample_heatmap(heatmap: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic upsampling (align_corners=False) of a ``[h, w]`` map, or a ``[B, h, w]`` batch of
    maps, to ``[height, width]`` (``[B, height, width]``)."""
    if heatmap.ndim not in (2, 3):
        raise ValueError(f"heatmap must be [h, w] or [B, h, w], got shape {tuple(heatmap.shape)}")
    maps = heatmap.detach().float().reshape(-1, 1, *heatmap.shape[-2:])
    up = F.interpolate(maps, size=(int(height), int(width)), mode="bicubic", align_corners=False)[:, 0]
    return up[0] if heatmap.ndim == 2 else up


def argmax_point(upsampled: torch.Tensor) -> tuple[int, int]:
    """(x, y) of the first maximum of a ``[H, W]`` map in row-major order."""
    return argmax_points(upsampled[None])[0]


def argmax_points(upsampled: torch.Tensor) -> list[tuple[int, int]]:
    """:func:`argmax_point` of each map of a ``[B, H, W]`` batch, in one call."""
    batch, _, width = upsampled.shape
    flat_indices = torch.argmax(upsampled.reshape(batch, -1), dim=1)  # the first maximal index of each row
    return [(index % width, index // width) for index in flat_indices.tolist()]


def pointing_point(heatmap: torch.Tensor, height: int, width: int) -> tuple[int, int]:
    """The predicted point ``(x, y)`` in integer pixels of the original image."""
    return argmax_point(upsample_heatmap(torch.as_tensor(heatmap), height, width))


def point_in_box(point: tuple[float, float], box: Box) -> bool:
    x, y = point
    x1, y1, x2, y2 = box
    return x1 < x < x2 and y1 < y < y2


def pointing_hit(point: tuple[float, float], boxes: Sequence[Box]) -> bool:
    """True when the point lies strictly inside any ``[x1, y1, x2, y2]`` box."""
    return any(point_in_box(point, box) for box in boxes)


def classify_miss(point: tuple[float, float], boxes: Sequence[Box], other_boxes: Sequence[Box]) -> str | None:
    """None for a hit; ``"other_object"`` when a miss falls inside another annotated
    object of the image (a wrong choice); ``"background"`` when it falls on no object
    (this includes the border of the target box itself, which is not strictly inside)."""
    if pointing_hit(point, boxes):
        return None
    if pointing_hit(point, other_boxes):
        return "other_object"
    return "background"


def box_union_mask(boxes: Sequence[Box], height: int, width: int) -> torch.Tensor:
    """[height, width] bool: the pixels ``(x, y)`` strictly inside any box (``x1 < x < x2`` and
    ``y1 < y < y2``), the pointing game's rule, so a point on a True pixel is a hit. Boxes reaching
    outside the image count with their part inside it; overlapping boxes count each pixel once."""
    columns, rows = torch.arange(int(width)), torch.arange(int(height))
    mask = torch.zeros(int(height), int(width), dtype=torch.bool)
    for x1, y1, x2, y2 in boxes:
        mask |= ((rows > y1) & (rows < y2))[:, None] & ((columns > x1) & (columns < x2))[None, :]
    return mask


def energy_in_boxes(upsampled: torch.Tensor, boxes: Sequence[Box]) -> float | None:
    """The share of the map's POSITIVE mass inside the union of ``boxes``: the energy-based pointing
    game of Wang et al. 2020 (Score-CAM) on a ``[H, W]`` map at the original image size.

    Negative values are not mass (GradCAM's evaluation map can be negative after bicubic
    upsampling; they are set to 0). A map with no positive value has no energy to share: None.
    """
    positive = upsampled.detach().double().clamp(min=0)
    total = float(positive.sum())
    if total <= 0.0:
        return None
    inside = float(positive[box_union_mask(boxes, *upsampled.shape)].sum())
    return inside / total


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes, by pycocotools (COCO's box IoU; 0 without overlap)."""
    from pycocotools import mask as coco_mask

    def xywh(box: Box) -> list[float]:
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    return float(coco_mask.iou([xywh(a)], [xywh(b)], [0])[0][0])


def best_proposal(
    upsampled: torch.Tensor, proposals_xywh: Sequence[Box], alpha: float = 0.5
) -> list[float] | None:
    """ALBEF's box metric: rank detector proposals (COCO xywh) by the heatmap mass
    inside each box divided by ``area ** alpha``; return the best as xyxy.

    Integer slicing as in ALBEF's ``grounding_eval`` (``mask[int(y):int(y+h), int(x):int(x+w)]``).
    """
    best, best_score = None, -float("inf")
    for x, y, w, h in proposals_xywh:
        area = w * h
        if area <= 0:
            continue
        score = float(upsampled[int(y) : int(y + h), int(x) : int(x + w)].sum()) / area**alpha
        if score > best_score:
            best, best_score = [x, y, x + w, y + h], score
    return best


def box_hit(upsampled: torch.Tensor, proposals_xywh: Sequence[Box], gt_box: Box, alpha: float = 0.5) -> bool:
    """Hit when the best-ranked proposal has IoU >= 0.5 with the ground-truth box (xyxy)."""
    best = best_proposal(upsampled, proposals_xywh, alpha)
    return best is not None and box_iou(best, gt_box) >= 0.5
