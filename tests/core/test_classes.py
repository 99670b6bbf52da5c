"""Several classes: a project's classes, the new output layer, per-class rounds, evaluation and prediction."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.errors import NapariUNetError
from napari_unet.labels.classes import SegmentationClass, parse_classes
from napari_unet.project import Project
from napari_unet.training import TrainConfig

CLASSES = [SegmentationClass("disc"), SegmentationClass("square"), SegmentationClass("hole", objects=False)]
# Enough for a base-width-8 model to tell three kinds of blob apart (about 10 s).
QUICK = TrainConfig(epochs=4, steps_per_epoch=40, batch_size=2, patch_size=64, learning_rate=5e-3)


def _three_classes(seed: int, size: int = 128):
    """Noise with bright discs (1), mid-grey squares (2) and dark discs (3); labels are the class ids."""
    rng = np.random.default_rng(seed)
    image = rng.normal(60, 4, (size, size))
    labels = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for number in range(9):
        value = number % 3 + 1
        cy, cx = rng.integers(10, size - 10, 2)
        shape = (np.maximum(abs(yy - cy), abs(xx - cx)) < 7) if value == 2 else ((yy - cy) ** 2 + (xx - cx) ** 2 < 56)
        shape &= labels == 0
        image[shape] += {1: 90, 2: 45, 3: -45}[value]
        labels[shape] = value
    return image.astype(np.float32), labels


@pytest.fixture
def wider_start_model(tmp_path) -> str:
    """A base-width-8 random one-class model: a base width of 4 learns three classes too slowly for a test."""
    import keras

    from napari_unet.model import UNetConfig, new_model, save_model

    keras.utils.set_random_seed(0)
    return str(save_model(new_model(UNetConfig(base_width=8, depth=2), tile_size=64, name="small"),
                          tmp_path / "small.keras"))


@pytest.fixture
def three_class_project(tmp_path, wider_start_model):
    project = Project.init(tmp_path / "project", wider_start_model, classes=CLASSES)
    for seed in (0, 1, 2):
        project.add_pair(*_three_classes(seed))
    project.add_pair(*_three_classes(9), evaluation=True)
    return project


def test_a_three_class_round_gets_a_new_output_layer_and_learns_every_class(three_class_project, tmp_path):
    from napari_unet.inference.prediction import predict
    from napari_unet.scoring.evaluation import evaluate

    outcome = three_class_project.round(QUICK)
    record, model = outcome.record, outcome.model
    assert model.config.n_classes == 4 and model.metadata.class_names == ["background", "disc", "square", "hole"]
    assert model.metadata.instance_method == "classes" and model.metadata.object_classes == ["disc", "square"]
    assert "New output layer for 3 classes" in model.metadata.info["description"]
    classes = record.eval.classes
    assert list(classes) == ["disc", "square", "hole"]
    # Chance for a class covering a few % of the pixels is an IoU of a few %; every class must be far above it.
    assert all(scores["after"]["iou"] > 0.5 for scores in classes.values()), classes
    assert record.kept and record.eval.after["iou"] == pytest.approx(
        np.mean([c["after"]["iou"] for c in classes.values()]), abs=1e-3)
    assert "square" in record.reason

    image, truth = _three_classes(9)
    labels = predict(model, image, output="labels")
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and {1, 2, 3} <= set(np.unique(labels).tolist())
    assert predict(model, image, output="probabilities").shape == (*image.shape, 4)
    instances = predict(model, image, output="instances")
    assert np.all(instances[labels == 3] == 0)  # holes are regions, not objects
    assert len(np.unique(instances[labels == 1])) - 1 >= 2  # the three discs are separate objects

    # Uncertainty (and so Next) reads all classes: the pixels given a wrong class are the less certain ones.
    same_labels, uncertainty = predict(model, image, with_uncertainty=True)
    wrong = same_labels != truth
    assert wrong.any() and uncertainty[wrong].mean() > 2 * uncertainty[~wrong].mean()

    result = evaluate(model, [image], [truth], instances=True)
    assert list(result["classes"]) == ["disc", "square", "hole"]
    assert result["iou"] == pytest.approx(np.mean([c["iou"] for c in result["classes"].values()]))
    assert "ap50" in result["classes"]["disc"] and "ap50" not in result["classes"]["hole"]
    assert result["classes"]["disc"]["iou"] == pytest.approx(classes["disc"]["after"]["iou"], abs=0.02)
    _cli_evaluate_prints_every_class(model, image, truth, tmp_path)

    # The next round starts from the version as it is: no second new head, the card says fine-tuned only.
    second = three_class_project.round(TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=64)).model
    assert "New output layer" not in second.metadata.info["description"]


def _cli_evaluate_prints_every_class(model, image, truth, tmp_path):
    import contextlib
    import io

    import tifffile

    from napari_unet.cli import main
    from napari_unet.model import save_model

    for folder, array in (("images", image), ("masks", truth)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "blobs.tif", array)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["evaluate", "-m", str(save_model(model, tmp_path / "three.keras")), "--images",
                     str(tmp_path / "images"), "--masks", str(tmp_path / "masks"), "--instances"]) == 0
    rows = {line.split()[0]: line.split() for line in printed.getvalue().splitlines() if line.strip()}
    assert {"disc", "square", "hole"} <= set(rows)
    assert len(rows["disc"]) == 6 and len(rows["hole"]) == 3  # IoU, Dice, ap50/map/f1_50 only for object classes


def test_a_label_beyond_the_projects_classes_is_refused_in_one_line(three_class_project):
    image, labels = _three_classes(3)
    labels[:4, :4] = 4
    with pytest.raises(NapariUNetError) as error:
        three_class_project.add_pair(image, labels, name="cells_04")
    message = str(error.value)
    assert "\n" not in message and "'cells_04'" in message and "value(s) 4" in message
    assert "1 disc, 2 square, 3 hole" in message and "project classes" in message and "--add" in message
    labels[:4, :4] = 255  # "not annotated" is always allowed
    three_class_project.add_pair(image, labels, name="cells_04")


def test_one_class_projects_take_any_label_as_before(tmp_path, start_model):
    project = Project.init(tmp_path / "one", start_model)
    assert [c.name for c in project.classes] == ["foreground"]
    image, labels = _three_classes(0)
    project.add_pair(image, labels * 7)  # instance-like ids: all foreground
    with pytest.raises(NapariUNetError, match="value\\(s\\) 7, 14, 21 but the project has 2 classes") as error:
        project.set_classes(parse_classes("disc,square"))  # those ids would become classes 7, 14, 21
    assert "\n" not in str(error.value) and "remove it first" in str(error.value)
    assert len(project.classes) == 1


def test_classes_can_be_added_after_painted_ones_but_not_reordered(three_class_project):
    more = [*CLASSES, SegmentationClass("ring", "#ff8800")]
    assert [c.name for c in three_class_project.set_classes(more)] == ["disc", "square", "hole", "ring"]
    with pytest.raises(NapariUNetError, match="add new classes after them"):
        three_class_project.set_classes([CLASSES[1], CLASSES[0]])


@pytest.mark.parametrize("text, objects, message", [
    ("nucleus,nucleus", None, "given twice"),
    ("background,cell", None, "label 0 is background"),
    ("nucleus:red", None, "#rrggbb"),
    ("nucleus,cytoplasm", "membrane", "not among the classes"),
    (" , ", None, "no class names"),
])
def test_bad_class_lists_are_one_clear_line(text, objects, message):
    with pytest.raises(NapariUNetError, match=message) as error:
        parse_classes(text, objects)
    assert "\n" not in str(error.value)


def test_parsed_classes_keep_order_colours_and_object_flags():
    parsed = parse_classes("nucleus:#ff0000, cytoplasm", objects="nucleus")
    assert parsed == [SegmentationClass("nucleus", "#ff0000", True), SegmentationClass("cytoplasm", "", False)]


def test_cli_declares_classes_refuses_labels_beyond_them_and_adds_one(tmp_path, start_model, capsys):
    import json

    import tifffile

    from napari_unet.cli import main

    root = str(tmp_path / "project")
    assert main(["project", "init", root, "-m", start_model, "--classes", "nucleus:#ff0000,cytoplasm",
                 "--regions", "cytoplasm"]) == 0
    assert "1 nucleus, 2 cytoplasm" in capsys.readouterr().out
    image, labels = _three_classes(0)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    assert main(["project", "add", root, "--image", str(tmp_path / "image.tif"),
                 "--mask", str(tmp_path / "labels.tif")]) != 0
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "value(s) 3" in error and "--add NAME" in error
    assert main(["project", "classes", root, "--add", "vacuole"]) == 0
    assert main(["project", "add", root, "--image", str(tmp_path / "image.tif"),
                 "--mask", str(tmp_path / "labels.tif")]) == 0
    capsys.readouterr()
    assert main(["project", "classes", root, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == [
        {"name": "nucleus", "colour": "#ff0000", "objects": True}, {"name": "cytoplasm", "colour": "", "objects": False},
        {"name": "vacuole", "colour": "", "objects": True}]


def test_live_trains_the_new_output_layer_and_the_forest_preview_learns_every_class(three_class_project):
    from napari_unet.training.live import ForestPreview, LiveTrainer

    trainer = LiveTrainer(three_class_project, three_class_project.active)
    assert trainer.reload() == 3
    burst = trainer.train(seconds=0.5)
    assert trainer.model.config.n_classes == 4 and trainer.model.metadata.classes == ["disc", "square", "hole"]
    assert burst.steps >= 1 and burst.iou is not None  # the mean IoU of the classes on the evaluation pair
    assert len(trainer.evaluation.class_names) == 3

    image, mask = _three_classes(0)
    forest = ForestPreview(multi_class=True)
    assert forest.fit(image, mask)
    predicted = forest.predict(_three_classes(9)[0])
    assert set(np.unique(predicted).tolist()) == {0, 1, 2, 3}
    assert forest.score(trainer.evaluation) > 0.6
    one_class = ForestPreview()
    assert one_class.fit(image, mask) and set(np.unique(one_class.predict(image)).tolist()) <= {0, 1}


def test_adding_a_class_keeps_what_the_head_learned_for_the_others():
    from tiny_models import contrasty_tiny_model

    from napari_unet.model import with_classes

    two = with_classes(contrasty_tiny_model(seed=1), ["nucleus", "cytoplasm"], ["nucleus"])
    three = with_classes(two, ["nucleus", "cytoplasm", "vesicle"], ["nucleus", "vesicle"], seed=5)
    old_kernel, old_bias = two.keras_model.get_layer("probabilities").get_weights()
    kernel, bias = three.keras_model.get_layer("probabilities").get_weights()
    assert kernel.shape[-1] == 4 and np.array_equal(kernel[..., :3], old_kernel) and np.array_equal(bias[:3], old_bias)
    assert "outputs for background, nucleus, cytoplasm kept" in three.metadata.info["new_output_layer"]["note"]
    assert np.array_equal(two.keras_model.get_layer("enc0_conv1").get_weights()[0],
                          three.keras_model.get_layer("enc0_conv1").get_weights()[0])
    assert with_classes(three, ["nucleus", "cytoplasm", "vesicle"], ["nucleus", "vesicle"]) is three


def test_a_start_model_is_judged_on_the_class_it_knows(three_class_project, start_model):
    """adaptation.adapt scores the start model on the corrections: only its own class is foreground to it."""
    parent = three_class_project.load_model(start_model)
    _, labels = _three_classes(0)
    labels[:3] = 255
    (seen,) = three_class_project.masks_for(parent, [labels])
    assert np.array_equal(seen, np.where(labels == 255, 255, labels == 1))
    headed = three_class_project.with_project_classes(parent)
    assert three_class_project.masks_for(headed, [labels])[0] is labels


def test_a_class_measurably_worse_rolls_back_a_later_round_but_not_the_one_adding_the_classes():
    from napari_unet.model import UNetConfig, new_model
    from napari_unet.project import Evaluation, _guard
    from napari_unet.scoring.evidence import class_unit_counts, compare

    rng = np.random.default_rng(0)
    truth = np.zeros((256, 256), np.uint8)
    truth[:, :100], truth[:, 100:200] = 1, 2
    before = truth.copy()
    after = truth.copy()
    after[rng.random(truth.shape) < 0.3 * (truth == 1)] = 0  # class 1 loses 30 % of its pixels everywhere
    evaluation = Evaluation("evaluation pairs", ["a"], [truth], [truth], [np.ones(truth.shape, bool)],
                            class_names=["nucleus", "rim"])
    comparison = compare(class_unit_counts(before, truth, None, 2), class_unit_counts(after, truth, None, 2))
    assert comparison.per_class[0]["verdict"] == "hurt" and comparison.per_class[1]["verdict"] != "hurt"
    later = new_model(UNetConfig(base_width=2, depth=1, n_classes=3))
    assert "on class 'nucleus'" in _guard(later, [after], evaluation, _better_mean(comparison))
    later.metadata.info["new_output_layer"] = {"classes": ["nucleus", "rim"]}
    assert _guard(later, [after], evaluation, _better_mean(comparison)) is None


def _better_mean(comparison):
    """The same per-class evidence with a mean that got better: only the per-class rule can object."""
    from dataclasses import replace

    return replace(comparison, verdict="helped", interval=(0.01, 0.02))


def _boundary_start_model(seed: int = 0, width: int = 4):
    """A tiny random model of the shipped `nuclei` kind: background, nucleus core, nucleus boundary; seeded watershed."""
    import keras

    from napari_unet.model import UNetConfig, new_model

    keras.utils.set_random_seed(seed)
    model = new_model(UNetConfig(base_width=width, depth=2, n_classes=3), tile_size=64, name="cores",
                      class_names=["background", "nucleus", "nucleus boundary"], instances="boundary_watershed",
                      seed_threshold=0.6, touching_width=2, core_fraction=0.5, background_threshold=0.1)
    layer = model.keras_model.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 30, bias])  # probabilities spread over (0, 1)
    return model


def test_a_boundary_start_model_keeps_its_instance_separation_for_the_object_class(blobs_image):

    from napari_unet.inference.prediction import predict
    from napari_unet.model import with_classes

    start = _boundary_start_model()
    headed = with_classes(start, ["nucleus", "rim"], ["nucleus"])
    metadata = headed.metadata
    assert metadata.class_names == ["background", "nucleus", "rim", "nucleus boundary"]
    assert metadata.classes == ["nucleus", "rim"] and metadata.boundary_outputs == [3] and metadata.class_outputs == 3
    assert (metadata.touching_width, metadata.core_fraction, metadata.seed_threshold) == (2, 0.5, 0.6)
    assert "outputs for background, nucleus, nucleus boundary kept" in metadata.info["new_output_layer"]["note"]
    kernel, bias = headed.keras_model.get_layer("probabilities").get_weights()
    old_kernel, _ = start.keras_model.get_layer("probabilities").get_weights()
    assert np.array_equal(kernel[..., [0, 1, 3]], old_kernel)
    # With the new class silenced, the outputs are the start model's ...
    bias[2] = -1e4
    headed.keras_model.get_layer("probabilities").set_weights([kernel, bias])
    raw = predict(headed, blobs_image, output="raw")
    assert raw.shape == (*blobs_image.shape, 4) and np.abs(raw[..., 2]).max() < 1e-6
    np.testing.assert_allclose(raw[..., [0, 1, 3]], predict(start, blobs_image, output="probabilities"), atol=1e-5)
    probabilities = predict(headed, blobs_image, output="probabilities")
    assert probabilities.shape == (*blobs_image.shape, 3) and np.allclose(probabilities.sum(-1), 1, atol=1e-5)
    assert set(np.unique(predict(headed, blobs_image))) <= {0, 1}
    # ... and so are its objects: seeds from the cores, grown over the nucleus (core and boundary added up).
    from scipy import ndimage

    from napari_unet.labels.instances import instances_from_boundary_probabilities
    from napari_unet.labels.postprocess import model_instances

    logits = ndimage.gaussian_filter(np.random.default_rng(0).normal(0, 1, (3, 96, 96)), (0, 4, 4)) * 40
    start_output = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    start_output = np.moveaxis(start_output, 0, -1).astype(np.float32)
    own = instances_from_boundary_probabilities(start_output, seed_threshold=0.6, background_threshold=0.5,
                                                min_seed_size=start.metadata.min_seed_size or 4)
    assert own.max() >= 3
    headed_output = np.insert(start_output, 2, 0.0, axis=-1)  # the silenced rim
    np.testing.assert_array_equal(model_instances(headed_output, metadata, 4), own)


def test_object_classes_train_on_their_cores_and_boundaries_regions_as_painted():
    from scipy import ndimage

    from napari_unet.labels.instances import class_boundary_targets

    yy, xx = np.mgrid[:64, :64]
    painted = np.zeros((64, 64), np.uint8)
    painted[((yy - 32) ** 2 + (xx - 40) ** 2 < 200) | ((yy - 32) ** 2 + (xx - 15) ** 2 < 100)] = 2  # a region
    discs = ((yy - 20) ** 2 + (xx - 14) ** 2 < 64) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 64)
    discs[19:22, 14:40] = True  # two nuclei painted as one region: joined by a narrow neck
    painted[discs] = 1
    painted[50:54, 50:54] = 255
    targets = class_boundary_targets(painted, [1], [3], touching_width=2, core_fraction=0.5)
    assert set(np.unique(targets)) == {0, 1, 2, 3, 255}
    assert np.array_equal(targets == 2, painted == 2) and np.array_equal(targets == 255, painted == 255)
    assert np.array_equal((targets == 1) | (targets == 3), painted == 1)
    assert ndimage.label(targets == 1)[1] == 2  # the two discs painted as one region still get a core each


def test_objects_of_a_class_grow_from_their_cores_regions_get_no_ids():
    from napari_unet.labels.postprocess import class_boundary_instances

    yy, xx = np.mgrid[:48, :64]
    output = np.zeros((48, 64, 4), np.float32)  # background, nucleus (cores), rim, nucleus boundary
    output[..., 0] = 1
    for cx in (20, 36):  # two touching nuclei of radius 9
        disc = (yy - 24) ** 2 + (xx - cx) ** 2 < 81
        core = (yy - 24) ** 2 + (xx - cx) ** 2 < 20
        output[disc] = (0, 0, 0, 1)
        output[core] = (0, 1, 0, 0)
    rim = (np.abs(yy - 24) > 14) & (output[..., 0] == 1)
    output[rim] = (0, 0, 1, 0)
    objects = class_boundary_instances(output, [1], [3], min_size=4, seed_threshold=0.5, min_seed_size=2)
    assert len(np.unique(objects)) - 1 == 2 and not objects[rim].any()
    assert objects[24, 20] != objects[24, 36]


def test_a_round_from_a_boundary_model_learns_the_classes_and_their_objects(tmp_path):
    from napari_unet.inference.prediction import predict
    from napari_unet.model import save_model
    from napari_unet.scoring.evaluation import evaluate

    start = str(save_model(_boundary_start_model(width=8), tmp_path / "cores.keras"))
    project = Project.init(tmp_path / "project", start, classes=CLASSES)
    for seed in (0, 1, 2):
        project.add_pair(*_three_classes(seed))
    project.add_pair(*_three_classes(9), evaluation=True)
    outcome = project.round(QUICK)
    model = outcome.model
    assert model.metadata.class_names == ["background", "disc", "square", "hole", "disc boundary", "square boundary"]
    assert model.metadata.boundary_outputs == [4, 5] and model.metadata.object_classes == ["disc", "square"]
    assert all(scores["after"]["iou"] > 0.5 for scores in outcome.record.eval.classes.values()), outcome.record.eval.classes
    image, truth = _three_classes(9)
    labels = predict(model, image)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    instances = predict(model, image, output="instances")
    assert not instances[labels == 3].any() and len(np.unique(instances[labels == 1])) - 1 >= 2
    result = evaluate(model, [image], [truth], instances=True)
    assert result["classes"]["disc"]["ap50"] > 0 and "ap50" not in result["classes"]["hole"]


def test_classes_renamed_recoloured_or_made_regions_keep_what_versions_learned(three_class_project):
    short = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=64)
    first = three_class_project.round(short)
    assert three_class_project.edit_classes(rename={"square": "box"}, colours={"disc": "#00ff00"}) == ""
    assert [(c.name, c.colour) for c in three_class_project.classes][:2] == [("disc", "#00ff00"), ("box", "")]
    assert three_class_project.renamed == [("square", "box")]
    version = three_class_project.load_model(first.record.version)
    assert version.metadata.classes == ["disc", "box", "hole"] and version.metadata.object_classes == ["disc", "box"]
    assert three_class_project.with_project_classes(version) is version  # what it learned for 'box' is kept
    from napari_unet.worker.tasks import ModelCache, ModelReference

    shown = ModelCache().get(ModelReference(first.record.version, str(three_class_project.root)))
    assert shown.metadata.classes == ["disc", "box", "hole"]  # the dock names its maps so too
    with pytest.raises(NapariUNetError, match="before it was renamed"):
        three_class_project.set_classes([*three_class_project.classes, SegmentationClass("square")])
    with pytest.raises(NapariUNetError, match="already used"):
        three_class_project.edit_classes(rename={"disc": "box"})
    note = three_class_project.edit_classes(objects=["hole"], regions=["box"])
    assert "'box' is now a region" in note and "'hole' is now an object class" in note and "\n" not in note
    assert [c.objects for c in three_class_project.classes] == [True, False, True]
    with pytest.raises(NapariUNetError, match="no class named 'vesicle'") as error:
        three_class_project.edit_classes(regions=["vesicle"])
    assert "1 disc, 2 box, 3 hole" in str(error.value)


def test_cli_renames_recolours_and_sets_kinds_of_a_projects_classes(tmp_path, start_model, capsys):
    import json

    from napari_unet.cli import main

    root = str(tmp_path / "project")
    assert main(["project", "init", root, "-m", start_model, "--classes", "nucleus,rim"]) == 0
    capsys.readouterr()
    assert main(["project", "classes", root, "--rename", "rim:ring", "--colour", "nucleus:#ff0000",
                 "--regions", "ring", "--add", "vesicle", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == [
        {"name": "nucleus", "colour": "#ff0000", "objects": True}, {"name": "ring", "colour": "", "objects": False},
        {"name": "vesicle", "colour": "", "objects": True}]
    assert main(["project", "classes", root, "--objects", "ring"]) == 0
    assert "2  ring\n" in capsys.readouterr().out
    for bad, message in ((["--rename", "ring"], "is not OLD:NEW"), (["--regions", "cytoplasm"], "cytoplasm"),
                         (["--colour", "ring:green"], "#rrggbb")):
        assert main(["project", "classes", root, *bad]) != 0
        error = capsys.readouterr().err.strip()
        assert len(error.splitlines()) == 1 and message in error, error


def test_the_dock_names_its_own_way_to_declare_a_class_for_a_label_beyond_them(three_class_project):
    from napari_unet.labels.classes import ADD_CLASS_IN_THE_DOCK

    image, labels = _three_classes(3)
    labels[:4, :4] = 7
    with pytest.raises(NapariUNetError) as error:
        three_class_project.add_pair(image, labels, name="cells", add_class=ADD_CLASS_IN_THE_DOCK)
    assert str(error.value).endswith(ADD_CLASS_IN_THE_DOCK) and "napari-unet" not in str(error.value)
