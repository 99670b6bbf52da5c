"""Small synthetic images with their labels, shared by core tests."""

from __future__ import annotations

import numpy as np


def bright_discs(seed: int, size: int = 128, instances: bool = False):
    """Bright discs on noise; labels 1..N (instances) or 1."""
    rng = np.random.default_rng(seed)
    image = rng.normal(20, 5, (size, size))
    labels = np.zeros((size, size), np.uint16)
    yy, xx = np.mgrid[:size, :size]
    for number in range(1, 9):
        cy, cx = rng.integers(10, size - 10, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
        image[disc] += 100
        labels[disc] = number if instances else 1
    return image.astype(np.float32), labels
