"""Checks that VOC-layout masks hold class indices (numpy only).

A mask's pixel values are its labels: 0 background, 1..N the defect classes, 255 ignore. Two
common ways of saving masks are valid pixel by pixel yet train a useless network, so they are
refused in one line:

- binary 0/255 masks (defects drawn white): 255 means ignore, so every defect pixel is ignored,
  the network learns background alone and scores 100 % mIoU;
- anti-aliased, blurred or JPEG-saved drawings without classes.txt: every grey level becomes a
  class, up to 255 of them. The rule is the number of classes the labels imply: more than
  `MAX_IMPLIED_CLASSES` is refused, with classes.txt as the way to load a set that really has
  that many. A rule on where labels lie (only on region edges) was not chosen: a genuine class
  of 1-px cracks lies only on edges too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autonad_edge.data.cache import CLASS_INDEX_HINT, IGNORE_INDEX
from autonad_edge.data.errors import DatasetError

# Defect sets have a few to ~20 classes; a drawing's grey levels give dozens to 254.
MAX_IMPLIED_CLASSES = 32


def class_names_from_labels(label_counts: np.ndarray, sources: Sequence[str | None]) -> list[str]:
    """Class names for masks without classes.txt: background, then class1..classK with K the
    largest label found (ignore excluded). `label_counts`: int [N, 256], one histogram a mask.

    Raises DatasetError, naming the first mask that holds one, when a label implies more than
    `MAX_IMPLIED_CLASSES` classes."""
    found = label_counts.sum(axis=0)
    found[IGNORE_INDEX] = 0
    used = np.flatnonzero(found)
    largest = int(used.max()) if used.size else 0
    if largest >= MAX_IMPLIED_CLASSES:
        row = int(np.flatnonzero(label_counts[:, MAX_IMPLIED_CLASSES:IGNORE_INDEX].sum(axis=1))[0])
        label = int(np.flatnonzero(label_counts[row, :IGNORE_INDEX]).max())
        raise DatasetError(
            f"mask label {label} would make {largest + 1} classes ({used.size} different values in "
            f"the masks, no classes.txt): {CLASS_INDEX_HINT}; if there are really that many "
            "classes, list them in classes.txt",
            sources[row],
        )
    # Label 0 is background by the VOC convention; the others have no names.
    return ["background"] + [f"class{i}" for i in range(1, largest + 1)]


def check_defects_labelled(label_counts: np.ndarray, num_classes: int, sources: Sequence[str | None]) -> None:
    """Refuse masks whose only non-background label is 255 (ignore): binary 0/255 masks. The
    error names the first mask that holds 255 (`sources`: each row's mask file)."""
    totals = label_counts.sum(axis=0)
    if totals[IGNORE_INDEX] > 0 and not totals[1:num_classes].any():
        row = int(np.flatnonzero(label_counts[:, IGNORE_INDEX])[0])
        raise DatasetError(
            f"every defect pixel of the set is {IGNORE_INDEX} (= ignore): binary 0/{IGNORE_INDEX} masks? "
            f"save defects as 1..N (class indices; {IGNORE_INDEX} only where the label is unknown)",
            sources[row],
        )
