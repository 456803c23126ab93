"""The prediction grid of the report, and the overlay colours it is made of."""

import numpy as np
import torch
from PIL import Image

from autonad_edge.training.pictures import PANEL_HEIGHT, image_scores, pick_worst_and_best, prediction_grid
from autonad_edge.training.predict import class_colours, overlay


class Raw(list):
    """A split as the grid needs it: items (normalised image, mask) and raw(i) (uint8, mask)."""

    def __init__(self, items, pixels):
        super().__init__(items)
        self.pixels = pixels
        self.ids = [f"img{i}" for i in range(len(items))]

    def raw(self, i):
        return self.pixels[i], self[i][1].numpy()


class Channel0(torch.nn.Module):
    num_classes = 2

    def forward(self, x):  # class 1 where channel 0 > 0
        return torch.cat([torch.zeros_like(x[:, :1]), x[:, :1]], dim=1)


def test_overlay_colours_known_pixels_and_keeps_the_size():
    rgb = np.full((5, 7, 3), 100, dtype=np.uint8)
    mask = np.zeros((5, 7), dtype=np.int64)
    mask[1, 2], mask[3, 4] = 1, 2
    out = overlay(rgb, mask, class_colours(3), alpha=1.0)
    assert out.shape == (5, 7, 3)
    assert tuple(out[1, 2]) == class_colours(3)[1] and tuple(out[3, 4]) == class_colours(3)[2]
    assert tuple(out[0, 0]) == (100, 100, 100)  # background untinted


def test_worst_and_best_are_picked_without_repeats():
    assert pick_worst_and_best([0.5, 0.1, 0.9, 0.3], 2) == [1, 3, 2, 0]
    assert pick_worst_and_best([0.2, 0.8], 3) == [0, 1]
    perfect = np.array([[[10, 0], [0, 5]]])
    nothing = np.array([[[10, 0], [0, 0]]])  # no defect in truth or prediction
    assert image_scores(perfect) == [1.0] and image_scores(nothing) == [1.0]


def test_grid_has_a_row_per_pick_and_ranks_by_defect_iou(tmp_path):
    items, pixels = [], []
    for i in range(4):
        image = -torch.ones(3, 20, 30)
        mask = torch.zeros(20, 30, dtype=torch.long)
        mask[5:10, 5:10] = 1
        image[0, 5:10, 5:10] = 1.0  # found ...
        image[0, 12:18, 12:12 + 4 * i] = 1.0  # ... with a false alarm that grows with i
        items.append((image, mask))
        pixels.append(np.full((20, 30), 128, dtype=np.uint8))  # grey images
    rows = prediction_grid(Channel0(), Raw(items, pixels), tmp_path / "grid.png", class_names=["bg", "dent"],
                           count=1)
    assert [r["id"] for r in rows] == ["img3", "img0"] and [r["row"] for r in rows] == ["worst", "best"]
    assert rows[1]["defect_iou"] == 1.0 and rows[0]["defect_iou"] < 1.0
    grid = Image.open(tmp_path / "grid.png")
    assert grid.mode == "RGB" and grid.height > 2 * PANEL_HEIGHT


def test_the_best_rows_show_images_with_defects_when_there_are_any(tmp_path):
    """Clean images predicted clean score 1 like perfect finds; on a set with defect-free images
    (Magnetic-tile's MT_Free) the best rows were blank images. They are drawn from the images
    that hold a defect."""
    assert pick_worst_and_best([1.0, 1.0, 0.9, 0.2], 1, [False, False, True, True]) == [3, 2]
    assert pick_worst_and_best([1.0, 1.0, 0.2], 1, [False, False, False]) == [2, 1]  # none: any image
    items, pixels = [], []
    for i in range(4):
        image, mask = -torch.ones(3, 16, 16), torch.zeros(16, 16, dtype=torch.long)
        if i >= 2:  # images 2 and 3 hold a defect, found with a false alarm
            mask[4:8, 4:8] = 1
            image[0, 4:8, 4:8] = 1.0
            image[0, 10:12, 10:10 + i] = 1.0
        items.append((image, mask))
        pixels.append(np.full((16, 16), 128, dtype=np.uint8))
    rows = prediction_grid(Channel0(), Raw(items, pixels), tmp_path / "grid.png", class_names=["bg", "dent"],
                           count=1)
    assert [r["id"] for r in rows] == ["img3", "img2"]
