"""Paired image/mask augmentation for training patches: one geometry for both, intensity for the image.

Geometry (flips, 90° rotations, the U-Net paper's elastic deformation) comes from albumentations,
which applies the same random transform to the image and to every mask of a call, interpolates
masks with nearest neighbour (so they keep their exact label values) and fills pixels moved in from
outside with `mask_fill` (the caller passes IGNORE_LABEL, so they never count in the loss).

Intensity jitter (brightness, contrast, gamma) is done here in numpy rather than with
albumentations' RandomBrightnessContrast/RandomGamma: those assume float images in [0, 1] and clip
(or give NaN for gamma of negative values), while percentile-normalised images legitimately hold
values below 0 and above 1.

To keep elastic deformation from dragging fill values into the patch, callers crop a window
`margin` pixels larger on every side and the augmenter returns its central patch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """What varies between training patches. Defaults are mild enough for thin EM membranes."""

    flips: bool = True  # mirror left-right
    # 90° rotations (with flips: all 8 symmetries of the square). Worth switching off when structures
    # have a preferred orientation or the annotation sits consistently off them along one axis:
    # rotated pairs then teach contradictory offsets (ISBI 2012 masks sit ~0.5 px above the dark
    # membranes and a model trained with rotations predicts them ~1 px low; there, though, the
    # rotations' extra variety was worth more). None: as the model was trained (its
    # metadata.symmetries), so fine-tuning keeps what it learned.
    rotations: bool | None = None
    elastic_probability: float = 0.5
    # albumentations' smooth displacement field: sigma = smoothness (px), alpha = strength; 1000/20
    # displaces pixels by about 3 px (std), up to ~10 px, over regions of ~50 px.
    elastic_alpha: float = 1000.0
    elastic_sigma: float = 20.0
    intensity_probability: float = 0.8
    brightness: float = 0.1  # added shift, uniform in ±brightness (normalised units)
    contrast: float = 0.2  # multiplied around the mean, uniform in 1 ± contrast
    gamma: tuple[float, float] = (0.8, 1.25)  # applied to the [0, 1] part, log-uniform
    # Additive Gaussian noise, std uniform in [0, noise] (normalised units), with the intensity jitter:
    # teaches dim, noisy nuclei (held-out DSB 512x640 images the first nuclei model missed).
    noise: float = 0.0
    # Zoom, uniform in [1/scale, scale] (1.0: none), so object sizes between the training sets' count.
    scale: float = 1.0
    # Per-object brightness: with this probability a patch's objects (connected non-background regions of its
    # label mask) are each dimmed or brightened by their own factor, log-uniform in object_brightness, relative
    # to the patch's background level. Why: fields where nuclei differ several-fold in brightness; on the
    # nuclei validation images, 25 % of the nuclei the shipped model missed are under half their image's
    # median brightness, against 1 % of those it found. Measured, not adopted for `nuclei` (p 0.5): it found
    # no more dim nuclei (experiments/dim_nuclei.py) and scored validation AP@0.5 0.859, held-out 0.820 (README).
    object_brightness_probability: float = 0.0
    object_brightness: tuple[float, float] = (0.25, 1.5)

    @property
    def margin(self) -> int:
        """Extra context (px per side) the caller should crop around a patch before augmenting."""
        return int(np.ceil(self.elastic_sigma * 1.2)) if self.elastic_probability > 0 else 0


# Geometric symmetries a model can be trained for, as (quarter turns, mirrored left-right) pairs;
# ModelMetadata.symmetries names one, and test-time augmentation averages over it.
SYMMETRIES: dict[str, tuple[tuple[int, bool], ...]] = {
    "dihedral": tuple((turns, mirrored) for mirrored in (False, True) for turns in range(4)),
    "rotations": tuple((turns, False) for turns in range(4)),
    "mirror": ((0, False), (0, True)),
    "none": ((0, False),),
}


# Order in which test-time augmentation adds views: every prefix of length 1, 2, 4, 8 is a group
# (identity; + half turn; + both mirrors; + quarter turns), so a partial average stays symmetric.
# On ISBI the first 2 views gave most of the gain of all 8 (held-out 0.0719 -> 0.0691 vs 0.0684).
VIEW_ORDER: tuple[tuple[int, bool], ...] = (
    (0, False), (2, False), (0, True), (2, True), (1, False), (3, False), (1, True), (3, True),
)
VIEW_COUNTS = (1, 2, 4, 8)


def tta_views(model_symmetries: str, views: bool | int) -> tuple[tuple[int, bool], ...]:
    """The transforms test-time augmentation averages: views=True means all the model's symmetries,
    False/1 none, an int (2, 4, 8) at most that many of them, taken in VIEW_ORDER."""
    if isinstance(views, bool):
        views = len(VIEW_ORDER) if views else 1
    if views not in VIEW_COUNTS:
        raise ValueError(
            f"test-time augmentation views={views!r}: use one of {', '.join(map(str, VIEW_COUNTS))} (or True for all)"
        )
    allowed = set(SYMMETRIES.get(model_symmetries, SYMMETRIES["none"]))
    return tuple(view for view in VIEW_ORDER if view in allowed)[:views]


def resolve_for_model(config: AugmentConfig, model_symmetries: str) -> AugmentConfig:
    """`config` with rotations=None replaced by what the model was trained with."""
    if config.rotations is not None:
        return config
    return replace(config, rotations=model_symmetries in ("dihedral", "rotations"))


def symmetries_of(config: AugmentConfig) -> str:
    """The SYMMETRIES name that training with `config` teaches (rotations=None counts as on)."""
    rotations = config.rotations is not False
    if config.flips:
        return "dihedral" if rotations else "mirror"
    return "rotations" if rotations else "none"


class PairAugmenter:
    """Augments (image, masks) patches reproducibly from a seed.

    image: float32 (H, W, C) with H = W = patch + 2*margin; masks: 2D arrays (uint8 labels, float
    weights...) of the same H x W. Returns the central (patch, patch) image and masks.
    """

    def __init__(self, config: AugmentConfig = AugmentConfig(), *, seed: int = 0, mask_fill: int = 255):
        import albumentations as A
        import cv2

        self.config = config
        self._mask_fill = mask_fill
        self._rng = np.random.default_rng(seed)
        transforms = []
        if config.flips:
            transforms.append(A.HorizontalFlip(p=0.5))
        if config.rotations is not False:
            transforms.append(A.RandomRotate90(p=1.0))
        if config.scale > 1.0:
            transforms.append(
                A.Affine(
                    scale=(1.0 / config.scale, config.scale),
                    keep_ratio=True,
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0.0,
                    fill_mask=mask_fill,
                    p=0.5,
                )
            )
        if config.elastic_probability > 0:
            transforms.append(
                A.ElasticTransform(
                    alpha=config.elastic_alpha,
                    sigma=config.elastic_sigma,
                    interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0.0,
                    fill_mask=mask_fill,
                    p=config.elastic_probability,
                )
            )
        self._geometry = A.Compose(transforms, seed=int(seed)) if transforms else None

    @property
    def margin(self) -> int:
        return self.config.margin

    def __call__(self, image: np.ndarray, masks: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        if self._geometry is not None:
            result = self._geometry(image=image, masks=list(masks))
            image, masks = result["image"], list(result["masks"])
        margin = self.margin
        if margin:
            window = (slice(margin, image.shape[0] - margin), slice(margin, image.shape[1] - margin))
            image = image[window]
            masks = [mask[window] for mask in masks]
        image = np.ascontiguousarray(image, dtype=np.float32)
        if masks and self.config.object_brightness_probability > 0:
            image = self.vary_object_brightness(image, masks[0])
        image = self.jitter_intensity(image)
        return image, [np.ascontiguousarray(mask) for mask in masks]

    def vary_object_brightness(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Each object of `labels` scaled by its own factor around the background level; the factor map is
        blurred by 1.5 px so no intensity step marks the mask's edge (the model would learn that, not the edge)."""
        from scipy import ndimage as ndi

        config = self.config
        if self._rng.random() >= config.object_brightness_probability:
            return image
        background = labels == 0
        objects, n_objects = ndi.label(~background & (labels != self._mask_fill))
        if n_objects == 0 or not background.any():
            return image
        low, high = config.object_brightness
        factors = np.exp(self._rng.uniform(np.log(low), np.log(high), n_objects + 1)).astype(np.float32)
        factors[0] = 1.0
        field = ndi.gaussian_filter(factors[objects], sigma=1.5)[..., None]
        level = np.median(image[background], axis=0)
        return ((image - level) * field + level).astype(np.float32)

    def jitter_intensity(self, image: np.ndarray) -> np.ndarray:
        """Random contrast, brightness and gamma; values outside [0, 1] keep their offset (no clipping)."""
        config = self.config
        if config.intensity_probability <= 0 or self._rng.random() >= config.intensity_probability:
            return image
        contrast = 1.0 + self._rng.uniform(-config.contrast, config.contrast)
        brightness = self._rng.uniform(-config.brightness, config.brightness)
        gamma = float(np.exp(self._rng.uniform(np.log(config.gamma[0]), np.log(config.gamma[1]))))
        mean = image.mean(axis=(0, 1), keepdims=True)
        image = (image - mean) * np.float32(contrast) + mean + np.float32(brightness)
        in_range = np.clip(image, 0.0, 1.0)
        image = in_range ** np.float32(gamma) + (image - in_range)
        if config.noise > 0:
            image = image + self._rng.normal(0.0, self._rng.uniform(0.0, config.noise), image.shape)
        return image.astype(np.float32)
