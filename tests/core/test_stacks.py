"""Objects in stacks: one id per object across the planes of a volume (stitched or from three views) and from
frame to frame of a time-lapse; the stack kind and the Z spacing checked and honoured."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi
from tiny_models import contrasty_tiny_model

from napari_unet.cli import main
from napari_unet.errors import NapariUNetError
from napari_unet.inference.prediction import predict, predict_stack_into
from napari_unet.labels.postprocess import instances_per_plane
from napari_unet.labels.stacks import (
    anisotropy_from_scale,
    link_frames,
    stack_depth,
    stitch_planes,
    uses_three_views,
    volume_instances,
)
from napari_unet.model import ModelMetadata, UNetConfig
from napari_unet.scoring.metrics import instance_counts, instance_scores


def ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((axis - c) ** 2 for axis, c in zip(grid, centre)) <= radius**2


def two_touching_balls(shape=(26, 40, 60)) -> np.ndarray:
    """Instance labels 1, 2 of two balls of radius 9 that touch, the second 4 planes deeper than the first, so
    each has planes of its own where labelling plane by plane gives it id 1."""
    first = ball(shape, (10, 20, 20), 9)
    second = ball(shape, (14, 20, 37), 9)
    return np.where(second, 2, first.astype(np.int32))


def ap50(truth, predicted) -> float:
    return instance_scores(instance_counts(truth, predicted))["ap50"]


def test_two_touching_balls_become_two_3d_objects():
    truth = two_touching_balls()
    per_plane = instances_per_plane((truth > 0).astype(np.uint8))
    ids_of = [set(np.unique(per_plane[(truth == k) & (per_plane > 0)]).tolist()) for k in (1, 2)]
    assert ids_of[0] & ids_of[1]  # ids restart in every plane: the two balls share an id
    stitched = stitch_planes(per_plane)
    assert stitched.dtype == np.int32 and stitched.shape == truth.shape
    assert stitched.max() == 2 and ap50(truth, stitched) == 1.0
    main_ids = []
    for object_id in (1, 2):  # each ball is one object (up to where the planes' split runs) with an id of its own
        ids, counts = np.unique(stitched[(truth == object_id) & (stitched > 0)], return_counts=True)
        assert counts.max() > 0.95 * counts.sum()
        main_ids.append(ids[counts.argmax()])
    assert main_ids[0] != main_ids[1]


def test_one_ball_has_one_id_in_every_plane():
    truth = ball((24, 32, 32), (12, 16, 16), 10).astype(np.int32)
    stitched = stitch_planes(instances_per_plane(truth.astype(np.uint8)))
    planes_with_it = [plane for plane in stitched if plane.any()]
    assert len(planes_with_it) >= 17
    assert {int(i) for plane in planes_with_it for i in np.unique(plane[plane > 0])} == {1}


def test_objects_that_barely_overlap_stay_apart():
    """Below the IoU threshold two objects of neighbouring planes are not joined (and above it they are)."""
    planes = np.zeros((2, 20, 20), dtype=np.int32)
    planes[0, 2:12, 2:12] = 1
    planes[1, 9:19, 9:19] = 1  # IoU 9 / 191
    assert stitch_planes(planes).max() == 2
    planes[1] = 0
    planes[1, 4:14, 4:14] = 1  # IoU 64 / 136
    assert stitch_planes(planes).max() == 1


def test_an_object_cut_in_one_plane_stays_one_object():
    """Both halves of an object cut in two in one plane overlap the whole object in the planes around."""
    planes = np.zeros((3, 20, 20), dtype=np.int32)
    planes[:, 4:16, 4:16] = 1
    planes[1, 4:16, 10:16] = 2
    assert stitch_planes(planes).max() == 1


def moving_blobs(n_frames=6):
    """(T, Y, X) truth ids of two touching blobs moving right, and the same frames labelled each on its own
    with ids shuffled in every frame (as a plane-by-plane prediction numbers them)."""
    rng = np.random.default_rng(0)
    truth = np.zeros((n_frames, 48, 80), dtype=np.int32)
    for t in range(n_frames):
        truth[t][ball((48, 80), (24, 12 + 4 * t), 8)] = 1
        truth[t][ball((48, 80), (24, 28 + 4 * t), 8)] = 2
    shuffled = np.zeros_like(truth)
    for t in range(n_frames):
        order = rng.permutation([5, 9])
        shuffled[t] = np.where(truth[t] == 1, order[0], np.where(truth[t] == 2, order[1], 0))
    return truth, shuffled


def test_ids_are_kept_across_frames_for_moving_blobs():
    truth, per_frame = moving_blobs()
    assert len({tuple(np.unique(frame[truth[t] == 1])) for t, frame in enumerate(per_frame)}) > 1  # ids change
    linked = link_frames(per_frame)
    for object_id in (1, 2):
        ids = {int(i) for i in np.unique(linked[truth == object_id])}
        assert len(ids) == 1
    assert np.unique(linked[truth == 1])[0] != np.unique(linked[truth == 2])[0]


def test_a_new_blob_gets_an_id_never_used_before():
    truth, per_frame = moving_blobs()
    per_frame[3][ball((48, 80), (6, 70), 4)] = 7  # appears in frame 3
    per_frame[4][per_frame[4] == per_frame[4][24, 12 + 16]] = 0  # the first blob is missed in frame 4 ...
    linked = link_frames(per_frame)
    before = set(np.unique(linked[:3]).tolist())
    newcomer = int(linked[3][6, 70])
    assert newcomer not in before
    first_id = int(linked[0][24, 12])
    assert int(linked[5][24, 12 + 20]) not in before | {newcomer}  # ... and comes back as a new object
    assert int(linked[5][24, 28 + 20]) == int(linked[0][24, 28])  # its neighbour kept its id throughout
    assert first_id in before


def test_frames_can_be_volumes():
    """Linking compares whole frames, so the objects of (T, Z, Y, X) volumes keep their ids too."""
    frames = np.stack([two_touching_balls() for _ in range(3)])
    frames[1] = np.where(frames[1] > 0, 3 - frames[1], 0)  # ids swapped in the middle frame
    linked = link_frames(frames)
    assert (linked[2] == linked[0]).all() and (linked[1] == linked[0]).all()


@pytest.fixture(scope="module")
def model():
    return contrasty_tiny_model(seed=0)


def blob_volume(shape=(8, 32, 32)) -> np.ndarray:
    rng = np.random.default_rng(3)
    return (ndi.gaussian_filter(rng.random(shape), 2) * 60000).astype(np.uint16)


def test_predict_stitches_a_volume_and_links_a_time_lapse(model):
    """stack='z' and stack='t' are the plane-by-plane instances stitched over Z and linked over time."""
    volume = blob_volume()
    per_plane = predict(model, volume, output="instances")
    assert per_plane.max() >= 1
    np.testing.assert_array_equal(predict(model, volume, output="instances", stack="z"), stitch_planes(per_plane))
    np.testing.assert_array_equal(predict(model, volume, output="instances", stack="t"), link_frames(per_plane))
    np.testing.assert_array_equal(predict(model, volume, output="instances", stack="planes"), per_plane)
    time_lapse = np.stack([volume, volume[::-1]])
    linked = predict(model, time_lapse, output="instances", stack="t")
    frames = predict(model, time_lapse, output="instances")
    np.testing.assert_array_equal(linked, link_frames(np.stack([stitch_planes(frame) for frame in frames])))


def test_a_stack_predicted_into_a_zarr_array_plane_by_plane_equals_the_whole_stack(model, tmp_path):
    """predict_stack_into reads one plane at a time from a zarr image and writes into a zarr array: the same objects
    as predict() on the whole stack in memory, stitched over Z or linked over time."""
    import zarr

    volume = np.concatenate([blob_volume(), blob_volume()[::-1]])
    image = zarr.open_array(str(tmp_path / "image.zarr"), mode="w", shape=volume.shape, chunks=(1, 32, 32),
                            dtype=volume.dtype)
    image[:] = volume
    for stack in ("z", "t"):
        out = zarr.open_array(str(tmp_path / f"{stack}.zarr"), mode="w", shape=volume.shape, chunks=(1, 32, 32),
                              dtype=np.int32)
        steps = []
        predict_stack_into(model, image, out, stack=stack, progress=lambda done, total, steps=steps: steps.append((done, total)))
        expected = predict(model, volume, output="instances", stack=stack)
        assert expected.max() >= 2
        np.testing.assert_array_equal(out[:], expected)
        assert steps[-1][0] == steps[-1][1] == volume.shape[0] * (2 if stack == "z" else 1)
    with pytest.raises(NapariUNetError, match="the output array is"):
        predict_stack_into(model, image, np.zeros((3, 32, 32), np.int32))


def test_anisotropy_decides_between_stitching_and_three_views(model):
    """Above ISOTROPIC_LIMIT (or unknown) the planes are stitched, and only the XY planes are predicted; a
    near-isotropic volume is also predicted on its XZ and YZ planes and segmented in 3-D."""
    volume = blob_volume()
    totals = {}
    results = {}
    for anisotropy in (None, 4.0, 1.0):
        seen = []
        results[anisotropy] = predict(model, volume, output="instances", stack="z", anisotropy=anisotropy,
                                      progress=lambda done, total, seen=seen: seen.append(total))
        totals[anisotropy] = seen[-1]
    assert totals[4.0] == totals[None] and totals[1.0] > totals[None]
    np.testing.assert_array_equal(results[4.0], results[None])
    assert results[1.0].shape == volume.shape and results[1.0].dtype == np.int32
    assert not uses_three_views(None) and not uses_three_views(2.5) and uses_three_views(2.0)
    assert anisotropy_from_scale((2.0, 0.5, 0.5)) == 4.0 and anisotropy_from_scale((1, 1)) is None
    assert anisotropy_from_scale((3, 1.0, 0.5, 0.5)) == 2.0


def test_three_view_objects_from_averaged_probabilities_separate_touching_balls():
    """The 3-D seeded watershed after the three-view average: touching balls come out as two objects, for a
    one-class model (seeds on the distance transform) and a boundary-class one (seeds from the cores), and on
    a volume of anisotropy 2 the objects return to its own planes."""
    truth = two_touching_balls((26, 40, 60))
    smooth = ndi.gaussian_filter((truth > 0).astype(np.float32), 1)
    one_class = ModelMetadata(config=UNetConfig(n_classes=1), instances="components")
    objects = volume_instances(smooth, one_class, 1, len(truth))
    assert objects.max() == 2 and ap50(truth, objects) == 1.0
    depth = ndi.distance_transform_edt(truth > 0)
    interior = (depth > 4).astype(np.float32)
    boundary = ((truth > 0) & (depth <= 4)).astype(np.float32)
    three_class = np.stack([1 - interior - boundary, interior, boundary], axis=-1)
    metadata = ModelMetadata(config=UNetConfig(n_classes=3), instances="boundary_watershed",
                             class_names=["background", "nucleus", "boundary"])
    objects = volume_instances(three_class, metadata, 3, len(truth))
    assert objects.max() == 2 and ap50(truth, objects) == 1.0
    halved = volume_instances(three_class, metadata, 3, len(truth) // 2)
    assert halved.shape == (13, 40, 60) and halved.max() == 2 and ap50(truth[1::2], halved) > 0.9


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_stacks_that_do_not_fit_are_refused_in_one_line(model):
    volume = blob_volume()
    with pytest.raises(NapariUNetError) as error:
        predict(model, volume[0], output="instances", stack="z")
    assert "one plane" in one_line(error)
    with pytest.raises(NapariUNetError) as error:
        predict(model, np.stack([volume, volume]), output="instances", stack="z")
    assert "stack='t'" in one_line(error)
    with pytest.raises(NapariUNetError) as error:
        predict(model, volume, output="labels", stack="z")
    assert "output='instances'" in one_line(error)
    with pytest.raises(NapariUNetError) as error:
        predict(model, volume, output="instances", stack="y")
    assert "z, t" in one_line(error) or "planes, z, t" in one_line(error)
    with pytest.raises(NapariUNetError) as error:
        predict(model, volume, output="instances", stack="z", anisotropy=0)
    assert "positive" in one_line(error)
    with pytest.raises(NapariUNetError) as error:
        predict(model, volume, output="instances", anisotropy=2)
    assert "stack='z'" in one_line(error)
    with pytest.raises(NapariUNetError) as error:
        predict(model, volume, output="instances", stack="t", anisotropy=2)
    assert "no Z" in one_line(error)


def test_stack_depth_reads_the_layout_as_prediction_does():
    assert stack_depth((31, 61, 57), 1) == 1
    assert stack_depth((61, 57), 1) == 0
    assert stack_depth((2, 31, 61, 57), 1) == 2
    assert stack_depth((5, 64, 64, 3), 3) == 1 and stack_depth((64, 64, 3), 3) == 0
    assert stack_depth((64, 64, 3), 1) is None  # refused by prediction (colour into a grey model), which says why


def test_cli_needs_the_stack_kind_for_instances_of_a_stack(model, tmp_path, capsys):
    from napari_unet.model import save_model

    model_path = str(save_model(model, tmp_path / "tiny.keras"))
    image = tmp_path / "volume.tif"
    tifffile.imwrite(image, blob_volume())
    assert main(["predict", "-m", model_path, str(image), "-o", str(tmp_path / "out"), "--instances"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--stack z" in lines[0] and "volume.tif" in lines[0]
    assert not (tmp_path / "out" / "volume.tif").exists()
    assert main(["predict", "-m", model_path, str(image), "-o", str(tmp_path / "z"), "--instances", "--stack", "z"]) == 0
    expected = stitch_planes(predict(model, blob_volume(), output="instances"))
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "z" / "volume.tif"), expected)
    assert main(["predict", "-m", model_path, str(image), "-o", str(tmp_path / "t"), "--instances", "--link"]) == 0
    assert main(["predict", "-m", model_path, str(image), "-o", str(tmp_path / "p"), "--instances",
                 "--stack", "planes"]) == 0
    capsys.readouterr()
    for extra in (["--stack", "z"], ["--instances", "--anisotropy", "1"]):
        assert main(["predict", "-m", model_path, str(image), "-o", str(tmp_path / "bad"), *extra]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and ("add --instances" in lines[0] or "add --stack z" in lines[0])


def test_axis_names_say_volume_or_time_lapse_or_nothing():
    from napari_unet.labels.stacks import stack_kind_from_axis_names

    assert stack_kind_from_axis_names(("z", "y", "x"), 1) == "z"
    assert stack_kind_from_axis_names(("T", "y", "x"), 1) == "t"
    assert stack_kind_from_axis_names(("t", "z", "y", "x"), 2) == "t"
    for ambiguous, n in ((("-3", "-2", "-1"), 1), (("z", "t", "y", "x"), 2), (("c", "y", "x"), 1), ((), 1)):
        assert stack_kind_from_axis_names(ambiguous, n) is None


def test_corrected_planes_of_a_volume_become_plane_pairs_and_side_views_where_near_isotropic():
    from napari_unet.labels.masks import IGNORE_LABEL
    from napari_unet.training.volume_pairs import corrected_planes, volume_pairs

    truth = two_touching_balls()
    image = (truth > 0).astype(np.float32) * 200 + 10
    prediction = truth.copy()
    prediction[12] = 0  # the user fixed plane 12 ...
    assert corrected_planes(truth, prediction, painted=[8]) == [8, 12]  # ... and painted plane 8
    pairs = volume_pairs(image, truth, [8, 12], anisotropy=1.0)
    xy = [pair for pair in pairs if pair.view == "xy"]
    assert [pair.position for pair in xy] == [8, 12]
    np.testing.assert_array_equal(xy[1].mask > 0, truth[12] > 0)
    sides = [pair for pair in pairs if pair.view != "xy"]
    assert {pair.view for pair in sides} == {"xz", "yz"} and len(sides) <= 8
    for pair in sides:  # annotated on the corrected planes' rows only, objects where the volume has them
        assert pair.image.shape == pair.mask.shape == (truth.shape[0], truth.shape[2 if pair.view == "xz" else 1])
        assert np.flatnonzero((pair.mask != IGNORE_LABEL).any(axis=1)).tolist() == [8, 12]
        cut = np.take(truth, pair.position, axis=1 if pair.view == "xz" else 2)
        np.testing.assert_array_equal(pair.mask[[8, 12]] > 0, cut[[8, 12]] > 0)
    assert all(pair.view == "xy" for pair in volume_pairs(image, truth, [8, 12], anisotropy=3.0))
    with pytest.raises(NapariUNetError, match="no corrected plane"):
        volume_pairs(image, truth, [])


def test_given_the_prediction_side_views_are_annotated_on_every_plane_left_as_predicted():
    """A side view annotated on the corrected rows only shows strips a few rows thick (all "boundary" to a
    boundary-class model); with the prediction known, the planes left as predicted annotate it too, except a plane
    kept for evaluation. No YZ view passes through the corrected planes' held-out stripe."""
    from napari_unet.labels.masks import IGNORE_LABEL
    from napari_unet.training.training_set import held_out_region
    from napari_unet.training.volume_pairs import volume_pairs

    truth = two_touching_balls()
    image = (truth > 0).astype(np.float32) * 200 + 10
    prediction = truth.copy()
    prediction[[8, 12, 16]] = 0  # corrected: 8 and 12 (added), 16 (kept for evaluation)
    pairs = volume_pairs(image, truth, [8, 12], anisotropy=1.0, prediction=prediction, held_back=[16])
    sides = [pair for pair in pairs if pair.view != "xy"]
    assert sides
    for pair in sides:
        rows = np.flatnonzero((pair.mask != IGNORE_LABEL).any(axis=1)).tolist()
        assert rows == [z for z in range(truth.shape[0]) if z != 16]
        cut = np.take(truth, pair.position, axis=1 if pair.view == "xz" else 2)
        np.testing.assert_array_equal(pair.mask[rows] > 0, cut[rows] > 0)
    held_out = held_out_region(truth[8]).any(axis=0) | held_out_region(truth[12]).any(axis=0)
    assert held_out.any()
    assert not any(held_out[pair.position] for pair in sides if pair.view == "yz")


def test_painted_planes_reads_which_planes_a_stroke_wrote():
    from napari_unet.training.live import painted_planes

    brush = [((5, slice(2, 9), slice(3, 10)), None, 0, 1)]
    brush_3d = [((slice(1, 4), slice(2, 9), slice(3, 10)), np.ones((3, 7, 7), bool), 0, 1)]
    setitem = [((np.array([2, 2, 6]), np.array([1, 2, 3]), np.array([1, 2, 3])), 0, 1)]
    assert painted_planes(brush) == {(5,)}
    assert painted_planes(brush_3d) == {(1,), (2,), (3,)}
    assert painted_planes(setitem) == {(2,), (6,)}
