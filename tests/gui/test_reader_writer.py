"""npe2 reader (folders of image/mask pairs only) and writer (labels → TIFF)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet._reader import get_reader
from napari_unet._widgets.launch import PLUGIN
from napari_unet._writer import write_labels_tif


@pytest.fixture
def pair_folder(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        tifffile.imwrite(tmp_path / "images" / f"{stem}.tif", rng.integers(0, 255, (32, 40), dtype=np.uint8))
        tifffile.imwrite(tmp_path / "masks" / f"{stem}.tif", (rng.random((32, 40)) > 0.5).astype(np.uint8))
    return tmp_path


def test_reader_opens_a_pair_folder_as_image_and_labels(pair_folder):
    reader = get_reader(str(pair_folder))
    assert reader is not None
    layers = reader(str(pair_folder))
    assert [(kwargs["name"], kind) for _, kwargs, kind in layers] == [
        ("a", "image"), ("a mask", "labels"), ("b", "image"), ("b mask", "labels")]
    np.testing.assert_array_equal(layers[1][0], tifffile.imread(pair_folder / "masks" / "a.tif"))


def test_reader_leaves_plain_files_and_other_folders_to_napari(pair_folder, tmp_path_factory):
    assert get_reader(str(pair_folder / "images" / "a.tif")) is None
    assert get_reader(str(pair_folder / "images")) is None
    assert get_reader(str(tmp_path_factory.mktemp("empty"))) is None


def test_manifest_reader_claims_directories_only(pair_folder):
    import npe2

    manager = npe2.PluginManager.instance()
    manager.discover()
    assert PLUGIN in [r.plugin_name for r in manager.iter_compatible_readers([str(pair_folder)])]
    tif = str(pair_folder / "images" / "a.tif")
    assert PLUGIN not in [r.plugin_name for r in manager.iter_compatible_readers([tif])]


def test_writer_saves_labels_as_tif(tmp_path):
    labels = np.zeros((20, 30), dtype=np.int32)
    labels[5:10, 5:25] = 3
    labels[0, 0] = 255
    written = write_labels_tif(str(tmp_path / "out"), labels, {})
    assert written == [str(tmp_path / "out.tif")]
    saved = tifffile.imread(written[0])
    np.testing.assert_array_equal(saved, labels)
    big = labels.copy()
    big[1, 1] = 1000
    np.testing.assert_array_equal(tifffile.imread(write_labels_tif(str(tmp_path / "big.tiff"), big, {})[0]), big)


def test_viewer_opens_a_pair_folder_and_saves_labels(make_napari_viewer, pair_folder, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(pair_folder), plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == ["a", "a mask", "b", "b mask"]
    out = tmp_path / "saved.tif"
    viewer.layers["a mask"].save(str(out), plugin=PLUGIN)
    np.testing.assert_array_equal(tifffile.imread(out), viewer.layers["a mask"].data)
