"""Where is the model unsure? A per-pixel uncertainty map and the tile to correct next.

Two signals, each in [0, 1], higher = less sure:
- entropy of the view-averaged class probabilities, divided by log(number of outcomes) (a one-class
  model's p is read as the two outcomes p, 1 - p), so 1 means "all outcomes equally likely";
- disagreement between test-time-augmentation views: twice the standard deviation of the views'
  probabilities (averaged over outcomes), which reaches 1 when half the views say 0 and half say 1.
The engine (prediction.predict(with_uncertainty=True)) blends the views' mean and mean of squares
with the same window as the probabilities, so uncertainty tiles join as seamlessly as probabilities.

Which map is the default is decided here, once, by measurement (benchmarks/bench_uncertainty.py ranks,
README "Where to correct next"): on held-out tiles, the Spearman correlation between mean uncertainty
and the fraction of wrong pixels is the same for entropy and "combined" with 8 views (ISBI 0.867 vs
0.868, nuclei 0.848 vs 0.847) and lower for the disagreement alone (0.842, 0.833); the most uncertain
tenth of the tiles holds 1.9-2.0x the average error rate on ISBI with every map, 3.6x / 3.8x / 4.3x
(entropy / combined / disagreement) on nuclei. Too close to justify a second rule: entropy, for 1 view
or many. The other maps stay available (predict(with_uncertainty="combined"), needs >= 2 views).

"Next" ranks fixed, non-overlapping tiles of NEXT_TILE_SIZE px by mean uncertainty and skips every
tile that holds a corrected pixel (the caller says which pixels the user corrected).
"""

from __future__ import annotations

import numpy as np

METHODS = ("entropy", "disagreement", "combined")
DEFAULT_METHOD = "entropy"  # measured, see the module docstring
# Side of the tiles "Next" ranks: big enough to show an object in context, small enough to correct in
# a few strokes (a 512² ISBI slice has 16, a 256² nuclei field 4).
NEXT_TILE_SIZE = 128
_TINY = 1e-7


def _outcomes(probabilities: np.ndarray) -> np.ndarray:
    """(..., K) probabilities as mutually exclusive outcomes: a one-class model's p becomes (p, 1 - p)."""
    if probabilities.shape[-1] == 1:
        return np.concatenate([probabilities, 1.0 - probabilities], axis=-1)
    return probabilities


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Normalised entropy (...,) float32 in [0, 1] of (..., n_classes) probabilities (n_classes=1: p)."""
    outcomes = np.clip(_outcomes(np.asarray(probabilities, dtype=np.float32)), _TINY, 1.0)
    information = -(outcomes * np.log(outcomes)).sum(axis=-1)
    return np.clip(information / np.log(outcomes.shape[-1]), 0.0, 1.0).astype(np.float32)


def disagreement(mean: np.ndarray, mean_of_squares: np.ndarray) -> np.ndarray:
    """Views' disagreement (...,) float32 in [0, 1]: 2 x std over views, averaged over classes.

    mean, mean_of_squares: (..., n_classes) averages over the views of p and p² (n_classes=1: one
    class; its complement has the same spread, so nothing is added for it).
    """
    variance = np.maximum(np.asarray(mean_of_squares, np.float32) - np.square(np.asarray(mean, np.float32)), 0.0)
    return np.clip(2.0 * np.sqrt(variance).mean(axis=-1), 0.0, 1.0).astype(np.float32)


def uncertainty_map(probabilities: np.ndarray, mean_of_squares: np.ndarray | None = None,
                    method: str = DEFAULT_METHOD, classes: np.ndarray | None = None) -> np.ndarray:
    """Uncertainty (...,) float32 in [0, 1] from (..., n_classes) view-averaged probabilities.

    mean_of_squares: the views' mean of p² (needed by "disagreement" and "combined" only).
    method: one of METHODS.
    classes: the probabilities read as classes, whose entropy is taken, when the model's outputs are not its
    classes (postprocess.class_probabilities: a boundary output is part of its class, not a class of its own);
    None: the probabilities themselves. The views' disagreement is measured on every output.
    """
    if method not in METHODS:
        raise ValueError(f"uncertainty method {method!r} is not one of {', '.join(METHODS)}")
    classes = probabilities if classes is None else classes
    if method == "entropy":
        return entropy(classes)
    if mean_of_squares is None:
        raise ValueError(f"uncertainty method {method!r} needs several test-time-augmentation views")
    spread = disagreement(probabilities, mean_of_squares)
    if method == "disagreement":
        return spread
    return (0.5 * (entropy(classes) + spread)).astype(np.float32)


def tiles(shape: tuple[int, int], tile_size: int = NEXT_TILE_SIZE) -> list[tuple[slice, slice]]:
    """Non-overlapping (rows, cols) slices covering a (Y, X) plane; the last row/column may be smaller."""
    if tile_size < 1:
        raise ValueError(f"tile_size={tile_size} must be >= 1 px")
    height, width = shape
    return [(slice(y, min(y + tile_size, height)), slice(x, min(x + tile_size, width)))
            for y in range(0, height, tile_size) for x in range(0, width, tile_size)]


def tile_scores(uncertainty: np.ndarray, tile_size: int = NEXT_TILE_SIZE) -> list[tuple[tuple[slice, slice], float]]:
    """(tile, mean uncertainty) for every tile of a (Y, X) map, in row-major order."""
    uncertainty = np.asarray(uncertainty)
    return [(tile, float(uncertainty[tile].mean())) for tile in tiles(uncertainty.shape, tile_size)]


def next_tile(uncertainty: np.ndarray, corrected: np.ndarray | None = None,
              tile_size: int = NEXT_TILE_SIZE) -> tuple[slice, slice] | None:
    """The most uncertain tile of a (Y, X) map holding no corrected pixel; None when all are corrected.

    corrected: bool (Y, X), True where the user changed the prediction or already gave training labels.
    """
    uncertainty = np.asarray(uncertainty)
    if uncertainty.ndim != 2:
        raise ValueError(f"next_tile needs one (Y, X) uncertainty plane, got shape {uncertainty.shape}")
    if corrected is not None and np.shape(corrected) != uncertainty.shape:
        raise ValueError(f"corrected mask {np.shape(corrected)} and uncertainty {uncertainty.shape} differ in shape")
    candidates = [(score, tile) for tile, score in tile_scores(uncertainty, tile_size)
                  if corrected is None or not np.any(corrected[tile])]
    if not candidates:
        return None
    return max(candidates, key=lambda candidate: candidate[0])[1]
