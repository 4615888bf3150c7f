"""The pointing metric against a slow per-pixel reference written from the released evaluation."""

import numpy as np
import pytest
import torch

from amc.metrics import (
    argmax_point,
    argmax_points,
    best_proposal,
    box_hit,
    box_iou,
    box_union_mask,
    classify_miss,
    energy_in_boxes,
    pointing_hit,
    pointing_point,
    upsample_heatmap,
)


def _reference_point(heatmap: np.ndarray, height: int, width: int) -> tuple[int, int]:
    up = torch.nn.functional.interpolate(
        torch.tensor(heatmap, dtype=torch.float32)[None, None],
        size=(height, width),
        mode="bicubic",
        align_corners=False,
    )[0, 0].numpy()
    best, best_xy = -np.inf, None
    for y in range(height):  # row-major scan, first maximum wins
        for x in range(width):
            if up[y, x] > best:
                best, best_xy = up[y, x], (x, y)
    return best_xy


@pytest.mark.parametrize(
    "shape,size", [((12, 12), (120, 97)), ((16, 16), (333, 500)), ((24, 24), (100, 150))]
)
def test_point_matches_reference(shape, size):
    rng = np.random.default_rng(0)
    heatmap = rng.random(shape).astype(np.float32)
    height, width = size
    assert pointing_point(torch.tensor(heatmap), height, width) == _reference_point(heatmap, height, width)


def test_first_maximum_wins_on_ties():
    heatmap = torch.zeros(4, 4)
    point = pointing_point(heatmap, 8, 8)  # all equal: the very first pixel
    assert point == (0, 0)


def test_point_lands_on_the_peak_in_original_coordinates():
    heatmap = torch.zeros(10, 10)
    heatmap[2, 7] = 1.0  # row 2, column 7 -> x ~ 7.5/10*W, y ~ 2.5/10*H
    x, y = pointing_point(heatmap, 200, 400)
    assert abs(x - 300) <= 20 and abs(y - 50) <= 10


def test_hit_is_strictly_inside_any_box():
    boxes = [[10, 10, 20, 20], [50, 50, 60, 60]]
    assert pointing_hit((15, 15), boxes)
    assert pointing_hit((55, 59), boxes)
    assert not pointing_hit((10, 15), boxes)  # on the left edge
    assert not pointing_hit((20, 15), boxes)  # on the right edge
    assert not pointing_hit((30, 30), boxes)


def test_miss_decomposition():
    target, others = [[10, 10, 20, 20]], [[30, 30, 40, 40]]
    assert classify_miss((15, 15), target, others) is None
    assert classify_miss((35, 35), target, others) == "other_object"
    assert classify_miss((5, 5), target, others) == "background"


def test_box_metric_ranks_by_mass_over_sqrt_area():
    heat = torch.zeros(100, 100)
    heat[20:40, 20:40] = 1.0
    proposals = [[0, 0, 100, 100], [20, 20, 20, 20], [60, 60, 10, 10]]
    assert best_proposal(heat, proposals) == [20, 20, 40, 40]
    assert box_hit(heat, proposals, [21, 21, 41, 41])
    assert not box_hit(heat, proposals, [60, 60, 70, 70])
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)


def _reference_iou(a, b) -> float:
    """The IoU written out (the suite's own before it used pycocotools)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_box_iou_by_pycocotools_equals_the_written_out_formula():
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(3000):
        corners = rng.uniform(0, 100, size=(2, 2, 2))
        if rng.random() < 0.3:
            corners = np.round(corners)  # integer pixels: shared edges and corners happen
        a, b = (np.concatenate([c.min(0), c.max(0) + 0.5]).tolist() for c in corners)
        pairs.append((a, b))
    pairs += [
        ([0, 0, 10, 10], [10, 0, 20, 10]),
        ([0, 0, 10, 10], [2, 2, 8, 8]),
        ([0, 0, 10, 10], [0, 0, 10, 10]),
    ]
    for a, b in pairs:
        assert box_iou(a, b) == pytest.approx(_reference_iou(a, b), abs=1e-12), (a, b)
    assert sum(box_iou(a, b) == 0 for a, b in pairs) > 100 and sum(box_iou(a, b) > 0.5 for a, b in pairs) > 10


def test_upsample_heatmap_single_and_batched():
    cam = torch.arange(12.0).reshape(3, 4)
    up = upsample_heatmap(cam, 30, 40)
    torch.testing.assert_close(
        up,
        torch.nn.functional.interpolate(cam[None, None], size=(30, 40), mode="bicubic", align_corners=False)[
            0, 0
        ],
    )
    assert upsample_heatmap(cam[None].repeat(2, 1, 1), 5, 6).shape == (2, 5, 6)


def test_no_edge_of_a_box_is_inside():
    box = [[10, 10, 20, 20]]
    assert pointing_hit((15, 19), box) and pointing_hit((11, 11), box)
    for edge in [(15, 10), (15, 20), (10, 15), (20, 15), (20, 20)]:
        assert not pointing_hit(edge, box), edge


def test_box_iou_of_disjoint_touching_degenerate_and_equal_boxes():
    assert box_iou([0, 0, 10, 10], [20, 0, 30, 10]) == 0.0  # apart in x
    assert box_iou([0, 0, 10, 10], [0, 20, 10, 30]) == 0.0  # apart in y
    assert box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching
    assert box_iou([5, 5, 5, 5], [5, 5, 5, 5]) == 0.0  # no area: no division by zero
    assert box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert box_iou([0, 0, 4, 4], [2, 2, 6, 6]) == pytest.approx(4 / 28)


def test_best_proposal_weights_the_area_by_alpha_and_skips_empty_boxes():
    heat = torch.zeros(20, 20)
    heat[0:2, 0:2] = 1.25  # mass 5 on a 2x2 corner
    heat[10:20, 10:20] = 0.25  # mass 25 over 10x10 (both exact in float32)
    small, large = [0, 0, 2, 2], [10, 10, 10, 10]
    # score = mass / area**alpha: small 5 / 4**alpha, large 25 / 100**alpha
    assert best_proposal(heat, [large, small], alpha=0.3) == [10, 10, 20, 20]  # 6.28 > 3.30
    assert best_proposal(heat, [large, small], alpha=1.0) == [0, 0, 2, 2]  # 1.25 > 0.25
    assert best_proposal(heat, [large, small]) == [10, 10, 20, 20]  # alpha 0.5: a tie (2.5), the first wins
    assert best_proposal(heat, [small, large]) == [0, 0, 2, 2]
    # empty proposals are skipped, not the end of the list; a 1x1 box counts
    assert best_proposal(heat, [[0, 0, 0, 5], [0, 0, 1, 1]]) == [0, 0, 1, 1]
    assert best_proposal(heat, [[3, 3, -1, 4]]) is None
    # box_hit ranks with the same alpha; an IoU of exactly 0.5 is a hit
    assert box_hit(heat, [large, small], [0, 0, 2, 2], alpha=1.0)
    assert not box_hit(heat, [large, small], [0, 0, 2, 2])
    assert box_hit(heat, [[0, 0, 2, 2]], [0, 0, 2, 4])  # IoU 4 / 8
    assert not box_hit(heat, [], [0, 0, 2, 2])


def test_upsample_rejects_other_shapes_naming_them():
    with pytest.raises(
        ValueError, match=r"^heatmap must be \[h, w\] or \[B, h, w\], got shape \(1, 2, 3, 4\)$"
    ):
        upsample_heatmap(torch.zeros(1, 2, 3, 4), 5, 5)


def test_argmax_points_of_a_batch_are_each_maps_first_maximum():
    rng = np.random.default_rng(1)
    maps = torch.tensor(rng.integers(0, 3, size=(40, 7, 9)), dtype=torch.float32)  # many ties
    maps[5] = 0.0  # all equal: the very first pixel
    points = argmax_points(maps)
    assert points[5] == (0, 0)
    for one, point in zip(maps, points, strict=True):
        flat = one.reshape(-1).tolist()
        y, x = divmod(flat.index(max(flat)), one.shape[1])  # the first maximum in row-major order
        assert point == (x, y) == argmax_point(one)


# ------------------------------------------------------------------ energy in the boxes


def test_energy_of_hand_built_maps():
    # A 10 x 10 image; the box [2, 2, 8, 8] holds pixels x, y in 3..7 (strictly inside: 5 x 5).
    box = [2, 2, 8, 8]
    inside = box_union_mask([box], 10, 10)
    assert inside.sum() == 25 and inside[3, 3] and inside[7, 7] and not inside[2, 5] and not inside[8, 5]
    heat = torch.zeros(10, 10)
    heat[4, 5] = 3.0  # all mass in the box
    assert energy_in_boxes(heat, [box]) == 1.0
    heat[0, 0] = 3.0  # as much outside
    assert energy_in_boxes(heat, [box]) == pytest.approx(0.5)
    heat[9, 9] = -100.0  # negative values are not mass
    heat[5, 5] = -100.0
    assert energy_in_boxes(heat, [box]) == pytest.approx(0.5)
    heat[2, 5] = 6.0  # on the box's edge: outside, as for the pointing game
    assert energy_in_boxes(heat, [box]) == pytest.approx(0.25)
    assert energy_in_boxes(torch.zeros(10, 10), [box]) is None  # no positive mass: undefined
    assert energy_in_boxes(-torch.ones(10, 10), [box]) is None


def test_energy_counts_the_union_of_boxes_once_and_the_image_part_of_a_box():
    heat = torch.ones(10, 10)  # 100 units, one per pixel
    # [0, 0, 6, 6] holds x, y in 1..5 (25 pixels); [3, 3, 9, 9] holds 4..8 (25); they share 4..5 (4)
    assert energy_in_boxes(heat, [[0, 0, 6, 6], [3, 3, 9, 9]]) == pytest.approx(46 / 100)
    assert energy_in_boxes(heat, [[0, 0, 6, 6], [0, 0, 6, 6]]) == pytest.approx(25 / 100)
    # a box reaching outside the image: only its pixels in the image exist (x, y in 0..3: 16)
    assert energy_in_boxes(heat, [[-5, -5, 4, 4]]) == pytest.approx(16 / 100)
    assert energy_in_boxes(heat, [[-5, -5, 20, 20]]) == pytest.approx(1.0)
    assert energy_in_boxes(heat, [[20, 20, 30, 30]]) == 0.0  # entirely outside
    # the rectangular image: rows are y, columns are x
    wide = torch.zeros(4, 8)
    wide[1, 6] = 1.0
    assert energy_in_boxes(wide, [[5, 0, 8, 3]]) == 1.0 and energy_in_boxes(wide, [[0, 5, 3, 8]]) == 0.0


def test_energy_mask_is_the_pointing_rule():
    rng = np.random.default_rng(1)
    boxes = [[3.5, 1.0, 9.0, 6.2], [-2.0, 7.0, 4.0, 12.5]]
    mask = box_union_mask(boxes, 12, 11)
    for y in range(12):
        for x in range(11):
            assert bool(mask[y, x]) == pointing_hit((x, y), boxes)
    # so a map whose every positive pixel is a hit has energy 1, and its peak is a hit
    heat = torch.tensor(rng.random((12, 11)), dtype=torch.float32) * mask
    assert energy_in_boxes(heat, boxes) == pytest.approx(1.0)
