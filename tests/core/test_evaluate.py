"""evaluate(): pooled IoU/Dice/pixel error over images given as arrays or files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from tiny_models import contrasty_tiny_model

from napari_unet.errors import NapariUNetError
from napari_unet.inference.prediction import predict
from napari_unet.scoring.evaluation import evaluate


@pytest.fixture(scope="module")
def model():
    return contrasty_tiny_model(seed=1)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [(ndi.gaussian_filter(rng.random(shape), 3) * 255).astype(np.uint8) for shape in [(64, 64), (48, 80)]]


def test_perfect_and_inverted_masks(model, images):
    predicted = [predict(model, image) for image in images]
    assert all(0 < p.mean() < 1 for p in predicted)
    perfect = evaluate(model, images, predicted)
    assert perfect["iou"] == 1.0 and perfect["dice"] == 1.0 and perfect["pixel_error"] == 0.0
    inverted = evaluate(model, images, [1 - p for p in predicted])
    assert inverted["iou"] == 0.0 and inverted["pixel_error"] == 1.0


def test_totals_pool_pixel_counts_over_images(model, images):
    rng = np.random.default_rng(4)
    masks = [(rng.random(image.shape) > 0.5).astype(np.uint8) * 255 for image in images]  # mask > 0 is foreground
    result = evaluate(model, images, masks)
    predicted = [predict(model, image) > 0 for image in images]
    truth = [mask > 0 for mask in masks]
    tp = sum(int((p & t).sum()) for p, t in zip(predicted, truth))
    union = sum(int((p | t).sum()) for p, t in zip(predicted, truth))
    wrong = sum(int((p != t).sum()) for p, t in zip(predicted, truth))
    pixels = sum(t.size for t in truth)
    assert result["n_images"] == 2
    assert result["iou"] == pytest.approx(tp / union)
    assert result["dice"] == pytest.approx(2 * tp / (union + tp))
    assert result["pixel_error"] == pytest.approx(wrong / pixels)
    first = result["per_image"][0]
    assert first["name"] == "image 0"
    assert first["iou"] == pytest.approx(int((predicted[0] & truth[0]).sum()) / int((predicted[0] | truth[0]).sum()))


def test_images_and_masks_can_be_files(model, images, tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    masks = [predict(model, image) for image in images]
    paths = []
    for number, (image, mask) in enumerate(zip(images, masks)):
        tifffile.imwrite(tmp_path / "img" / f"s{number}.tif", image)
        tifffile.imwrite(tmp_path / "msk" / f"s{number}.tif", mask)
        paths.append((tmp_path / "img" / f"s{number}.tif", tmp_path / "msk" / f"s{number}.tif"))
    result = evaluate(model, [p for p, _ in paths], [m for _, m in paths])
    assert result["iou"] == 1.0
    assert [row["name"] for row in result["per_image"]] == ["s0", "s1"]


def test_mask_with_another_shape_is_a_clear_error(model, images):
    with pytest.raises(NapariUNetError, match="mask 'mask 1' is 40×80 but its image 'image 1' is 48×80"):
        evaluate(model, images, [np.zeros((64, 64)), np.zeros((40, 80))])


def test_unequal_numbers_of_images_and_masks_are_refused(model, images):
    with pytest.raises(NapariUNetError, match="2 images but 1 masks"):
        evaluate(model, images, [np.zeros((64, 64))])


def test_public_api_evaluate_is_callable_even_after_importing_the_submodule(model, images):
    import napari_unet
    import napari_unet.scoring.evaluation  # binds napari_unet.scoring.evaluation, not napari_unet.evaluate

    masks = [predict(model, image) for image in images]
    assert napari_unet.evaluate(model, images, masks)["iou"] == 1.0
    assert napari_unet.evaluate(model, images, masks)["iou"] == 1.0
