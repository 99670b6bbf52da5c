"""The shipped sample images: present, documented layers, ground truth matching the images."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import _sample_data
from napari_unet._widgets.launch import PLUGIN
from napari_unet.errors import NapariUNetError

SAMPLES = {
    "em_membranes": _sample_data.em_membranes_sample,
    "nuclei": _sample_data.nuclei_sample,
    "nuclei_sparse": _sample_data.nuclei_sparse_sample,
}


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_sample_returns_image_and_matching_ground_truth_labels(key):
    layers = SAMPLES[key]()
    assert [layer_type for _, _, layer_type in layers] == ["image", "labels"]
    (image, image_kwargs, _), (truth, truth_kwargs, _) = layers
    assert image.shape == truth.shape and min(image.shape) >= 256
    assert "ground truth" in truth_kwargs["name"] and image_kwargs["name"] == key
    assert np.issubdtype(truth.dtype, np.integer)
    # the image must actually show its ground truth: foreground differs in brightness
    foreground = truth > 0
    assert 0.01 < foreground.mean() < 0.6
    assert abs(float(image[foreground].mean()) - float(image[~foreground].mean())) > 0.1 * float(image.std())


def test_em_sample_has_dark_membranes_on_brighter_cells():
    image, mask = _sample_data.load_em_membranes()
    assert image.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    assert image[mask == 1].mean() < image[mask == 0].mean() - 30


def test_nuclei_samples_are_real_dsb_images_with_separate_instances():
    image, labels = _sample_data.load_nuclei()
    assert image.dtype == np.uint8 and image.shape == (520, 696)
    assert len(np.unique(labels)) - 1 == 133  # the dense field: each nucleus its own id
    touching = (labels[:, :-1] > 0) & (labels[:, 1:] > 0) & (labels[:, :-1] != labels[:, 1:])
    assert touching.any()  # some nuclei touch: what the nuclei model must separate
    _, sparse = _sample_data.load_nuclei("nuclei_sparse")
    assert len(np.unique(sparse)) - 1 == 14


def test_sample_files_are_small_enough_to_ship():
    files = list(_sample_data.sample_data_dir().iterdir())
    assert sum(p.stat().st_size for p in files) < 2 * 1024 * 1024
    real = [p for p in files if p.name.startswith("nuclei")]
    assert len([p for p in real if not p.name.endswith("_labels.tif")]) <= 3  # at most three CC0 images
    assert sum(p.stat().st_size for p in real) < 1024 * 1024


def test_missing_sample_file_names_the_file_and_the_fix():
    with pytest.raises(NapariUNetError, match="no_such_sample.tif.*make_sample_data"):
        _sample_data.sample_path("no_such_sample.tif")


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_open_sample_in_viewer_adds_image_and_labels(make_napari_viewer, key):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, key)
    kinds = sorted(type(layer).__name__ for layer in viewer.layers)
    assert kinds == ["Image", "Labels"]
    assert viewer.layers[0].data.shape == viewer.layers[1].data.shape
