"""Training pairs from a corrected volume: every corrected plane is a pair, seen from the side too where it can be.

A user corrects a volume plane by plane (a 2-D network learns from planes). Which planes were corrected: those
whose labels differ from what napari-unet predicted, and those the user painted (a stroke that happened to leave
the labels as they were still says the plane was checked). Each becomes an XY pair (image plane, labels plane).

Where the voxels are near-isotropic (stacks.uses_three_views: the volume is also predicted from its XZ and YZ
planes), the volume's side views become pairs too, so the model learns what those planes look like: XZ and YZ
planes of the volume resampled to cubic voxels, taken through the corrected objects, at most SIDE_VIEWS per
direction, evenly spread. What they are annotated with:

- given the prediction the volume was corrected from, every row: the corrected planes' rows hold the user's
  labels, the others the prediction the user left as it was (a plane that differs from the prediction but is
  not among the planes added, e.g. one kept for evaluation, stays not annotated). A side view annotated on the
  corrected rows only teaches wrong things: each object there is a strip a few rows thick, whose every pixel a
  boundary-class model's targets call "boundary" (no interior), and the rows between say nothing, so the model
  unlearns the side views' interiors. Measured on the stardist test volume (docs/volumes-and-time.md): one round
  on three corrected planes took the three-view AP@0.5 from 0.66 to 0.13-0.25 with side views annotated on the
  corrected rows, to 0.68-0.74 with side views annotated on every row.
- without it, the rows of the corrected planes only (IGNORE_LABEL elsewhere).

Side views never pass through the held-out stripe of the corrected planes (training_set.held_out_region, the
right-hand columns): a YZ view there would train on the pixels a round is scored on.

No TensorFlow, no Qt: NumPy and scikit-image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet.errors import NapariUNetError
from napari_unet.labels.masks import IGNORE_LABEL
from napari_unet.labels.stacks import isotropic_depth, resample_depth, uses_three_views
from napari_unet.training.training_set import held_out_region

# XZ planes (and YZ planes) taken as pairs from one corrected volume: each shows the model the side views it
# predicts from, and a few suffice; every Y row would repeat the same corrected rows hundreds of times.
SIDE_VIEWS = 4


@dataclass(frozen=True)
class VolumePair:
    """One training pair cut from a volume: `view` "xy" (plane `position` along Z), "xz" (row `position` along Y)
    or "yz" (column `position` along X); image and mask as project.add_pair takes them."""

    view: str
    position: int
    image: np.ndarray
    mask: np.ndarray

    @property
    def suffix(self) -> str:
        """A pair-name suffix saying where it was cut, e.g. "z7", "xz_y31"."""
        return f"z{self.position}" if self.view == "xy" else f"{self.view}_{'y' if self.view == 'xz' else 'x'}{self.position}"


def corrected_planes(labels: np.ndarray, prediction: np.ndarray | None = None, painted=()) -> list[int]:
    """Indices (along the first axis) of the planes of a (Z, Y, X) labels volume that were corrected: those that
    differ from `prediction` (same shape; None: none known) and those in `painted`; sorted, each once."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise NapariUNetError(f"corrected planes are planes of a (Z, Y, X) volume, got labels of shape {labels.shape}")
    planes = {int(z) for z in painted if 0 <= int(z) < labels.shape[0]}
    if prediction is not None:
        prediction = np.asarray(prediction)
        if prediction.shape != labels.shape:
            raise NapariUNetError(f"the prediction is {prediction.shape} but the labels are {labels.shape}: "
                                  "they must be the same volume")
        planes |= {z for z in range(labels.shape[0]) if not np.array_equal(labels[z], prediction[z])}
    return sorted(planes)


def _as_mask(labels: np.ndarray, annotated: np.ndarray | None = None) -> np.ndarray:
    """Labels of one view as a mask: ids renumbered 1..n in that view (so they stay below IGNORE_LABEL where they
    can), IGNORE_LABEL where not annotated (`annotated` False, or the labels hold IGNORE_LABEL)."""
    from skimage.segmentation import relabel_sequential

    labels = np.asarray(labels)
    annotated = labels != IGNORE_LABEL if annotated is None else annotated & (labels != IGNORE_LABEL)
    renumbered = relabel_sequential(np.where(annotated, labels, 0).astype(np.int64))[0]
    mask = renumbered.astype(np.uint8 if renumbered.max(initial=0) < IGNORE_LABEL else np.int32)
    mask[~annotated] = IGNORE_LABEL
    return mask


def annotated_planes(labels: np.ndarray, planes, prediction: np.ndarray | None = None, held_back=()) -> np.ndarray:
    """bool (Z,): the planes of a volume whose labels count as annotation in its side views: `planes` (the
    corrected ones added), and, given the `prediction`, those the user left as predicted; never `held_back` (planes
    kept for evaluation)."""
    annotated = np.zeros(np.shape(labels)[0], dtype=bool)
    annotated[sorted({int(z) for z in planes})] = True
    if prediction is not None:
        prediction = np.asarray(prediction)
        if prediction.shape != np.shape(labels):
            raise NapariUNetError(f"the prediction is {prediction.shape} but the labels are {np.shape(labels)}: "
                                  "they must be the same volume")
        annotated |= np.array([np.array_equal(plane, predicted) for plane, predicted in zip(labels, prediction)])
    annotated[[int(z) for z in held_back]] = False
    return annotated


def held_out_columns(labels: np.ndarray, planes) -> np.ndarray:
    """bool (X,): the columns of the held-out stripes (training_set.held_out_region) of the corrected planes."""
    columns = np.zeros(np.shape(labels)[-1], dtype=bool)
    for z in planes:
        columns |= held_out_region(_as_mask(labels[z])).any(axis=0)
    return columns


def volume_pairs(image: np.ndarray, labels: np.ndarray, planes, anisotropy: float | None = None,
                 side_views: int = SIDE_VIEWS, prediction: np.ndarray | None = None, held_back=()) -> list[VolumePair]:
    """The training pairs of a corrected (Z, Y, X) volume: an XY pair per corrected plane in `planes`, and, where
    uses_three_views(anisotropy), up to `side_views` XZ and YZ pairs each (see the module docstring).

    image: (Z, Y, X) or (Z, Y, X, C); labels: (Z, Y, X) as painted (0 background, object ids or classes,
    IGNORE_LABEL not annotated); prediction: what the labels were corrected from (None: not known), so the side
    views are annotated on the planes left as predicted too; held_back: planes no side view may show (kept for
    evaluation). Side views need at least 2 corrected planes (one row is no side view)."""
    image, labels = np.asarray(image), np.asarray(labels)
    if labels.ndim != 3 or image.shape[:3] != labels.shape:
        raise NapariUNetError(f"a volume's pairs need a (Z, Y, X) image and labels of that shape, got image "
                              f"{image.shape} and labels {labels.shape}")
    planes = sorted({int(z) for z in planes})
    if not planes:
        raise NapariUNetError("no corrected plane: paint the planes you corrected (or change what was predicted), "
                              "then add them")
    pairs = [VolumePair("xy", z, image[z], _as_mask(labels[z])) for z in planes]
    if not uses_three_views(anisotropy) or len(planes) < 2 or side_views < 1:
        return pairs
    # Resampled to cubic voxels, each row takes its nearest plane (and whether that plane is annotated).
    annotated = np.zeros(labels.shape, dtype=bool)
    annotated[annotated_planes(labels, planes, prediction, held_back)] = True
    depth = isotropic_depth(labels.shape[0], anisotropy)
    cubic_image = resample_depth(image, depth).astype(image.dtype, copy=False)
    cubic_labels = resample_depth(labels, depth, order=0)
    cubic_annotated = resample_depth(annotated, depth, order=0)
    foreground = (labels[planes] != 0) & (labels[planes] != IGNORE_LABEL)
    held_out = held_out_columns(labels, planes)
    for view, axis in (("xz", 1), ("yz", 2)):
        through_objects = np.flatnonzero(foreground.any(axis=(0, 3 - axis)) & (~held_out if axis == 2 else True))
        if not through_objects.size:
            continue
        chosen = np.unique(through_objects[np.linspace(0, through_objects.size - 1, side_views).round().astype(int)])
        for position in chosen:
            view_image = np.take(cubic_image, position, axis=axis)
            view_mask = _as_mask(np.take(cubic_labels, position, axis=axis),
                                 np.take(cubic_annotated, position, axis=axis))
            pairs.append(VolumePair(view, int(position), view_image, view_mask))
    return pairs
