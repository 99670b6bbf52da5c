"""The classic U-Net (Ronneberger et al. 2015) and its .keras files, which carry prediction metadata.

Only built-in Keras layers are used, so models load in Keras safe mode. Padding to a multiple of
2**depth happens outside the model (see tiling), so the model itself is fully convolutional.
"""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
import zipfile
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from napari_unet.errors import ModelLoadError
from napari_unet.inference.normalize import NormalizationConfig
from napari_unet.storage.files import atomic_write

# Name of the JSON entry that napari-unet adds to a .keras zip; Keras ignores unknown entries.
SIDE_VIEWS_ENTRY = "napari_unet_side_views.keras"  # a second network: SegmentationModel.side_views
METADATA_ENTRY = "napari_unet.json"
METADATA_FORMAT = "napari-unet/1"
UPSAMPLING_MODES = ("transpose", "bilinear")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture. The reference of the paper is base_width=64, depth=3 (64-128-256 + 512)."""

    n_channels: int = 1
    base_width: int = 16
    depth: int = 3
    n_classes: int = 1
    upsampling: str = "transpose"
    batch_norm: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        if self.upsampling not in UPSAMPLING_MODES:
            raise ValueError(f"upsampling must be one of {UPSAMPLING_MODES}, not {self.upsampling!r}")
        if self.n_channels < 1 or self.base_width < 1 or self.depth < 1 or self.n_classes < 1:
            raise ValueError(f"channels, width, depth and classes must be >= 1: {self}")

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per pooling level)."""
        return 2**self.depth


_FIELD_DEFAULT = object()  # Stored.fallback: the field's own default


@dataclass(frozen=True)
class Stored:
    """How one ModelMetadata field is kept in the .keras file's JSON, and what a readable value is.

    A number field says its range: `low`..`high` (`ends` says which ends belong, as in "(]"), `whole` for whole
    numbers, `count` for a list of that many numbers; a name field says its `choices`. A stored value outside
    its rule takes `fallback` (default: the field's default) with a warning that names the field, the value and
    the rule, so a file from an older or newer version still loads; a `required` field is an error instead (the
    weights cannot be used without it). read/write convert other fields from/to JSON (None: as they are);
    written: the attribute written instead of the field (a property that fills in a default)."""

    low: float | None = None
    high: float | None = None
    ends: str = "[]"
    whole: bool = False
    count: int | None = None
    choices: Callable[[], tuple[str, ...]] | None = None  # looked up when read: they live in modules importing this one
    noun: str = ""  # what the value is, for the warning ("a probability"); default "a number", "a whole number" …
    fallback: Any = _FIELD_DEFAULT
    otherwise: str = ""  # what the fallback means to the user; default "using <fallback>"
    required: bool = False
    read: Callable[[Any], Any] | None = None
    write: Callable[[Any], Any] | None = None
    written: str | None = None

    @property
    def numeric(self) -> bool:
        return self.low is not None or self.high is not None

    def rule(self) -> str:
        """The rule in words, e.g. "a probability in (0, 1)"."""
        if self.choices is not None:
            names = self.choices()
            return "one of " + ", ".join(repr(name) for name in names if name) + (" (or empty)" if "" in names else "")
        noun = self.noun or (f"{self.count} numbers" if self.count else "a whole number" if self.whole else "a number")
        if self.high is None:
            return f"{noun} {'>' if self.ends[0] == '(' else '>='} {self.low:g}"
        return f"{noun} in {self.ends[0]}{self.low:g}, {self.high:g}{self.ends[1]}"

    def accepts(self, value) -> bool:
        if self.choices is not None:
            return value in self.choices()
        if not self.numeric:
            return True
        if self.count is not None:
            return isinstance(value, (list, tuple)) and len(value) == self.count and all(map(self._in_range, value))
        return self._in_range(value)

    def _in_range(self, number) -> bool:
        if not isinstance(number, (int, float)) or isinstance(number, bool) or not math.isfinite(number):
            return False
        if self.whole and not float(number).is_integer():
            return False
        above = self.low is None or (number > self.low if self.ends[0] == "(" else number >= self.low)
        below = self.high is None or (number < self.high if self.ends[1] == ")" else number <= self.high)
        return above and below

    def from_json(self, value):
        """The field's value of a checked stored value."""
        if self.read is not None:
            return self.read(value)
        return self._numbers(value, tuple) if self.numeric and value is not None else value

    def to_json(self, value):
        if self.write is not None:
            return self.write(value)
        return self._numbers(value, list) if self.numeric and value is not None else value

    def _numbers(self, value, sequence: type):
        """Plain ints (whole) or floats, one or a `sequence` of `count`."""
        number = int if self.whole else float
        return sequence(number(v) for v in value) if self.count else number(value)


def _stored(default=MISSING, default_factory=MISSING, **rule):
    """A ModelMetadata field stored in the file by `rule` (see Stored)."""
    return field(default=default, default_factory=default_factory, metadata={"stored": Stored(**rule)})


def _names(value) -> list[str]:
    """A stored list of names (class or channel names)."""
    if not isinstance(value, list):
        raise TypeError("not a list")
    return [str(name) for name in value]


def _instance_methods() -> tuple[str, ...]:
    from napari_unet.labels.instances import INSTANCE_METHODS

    return ("", *INSTANCE_METHODS)


def _symmetries() -> tuple[str, ...]:
    from napari_unet.training.augment import SYMMETRIES

    return tuple(SYMMETRIES)


_PROBABILITY = {"low": 0.0, "high": 1.0, "ends": "()", "noun": "a probability"}
_PIXEL_COUNT = {"low": 1, "whole": True, "noun": "a whole number of pixels"}


def _read_stored(spec, value):
    """The value of field `spec` read from the file's JSON by its Stored rule (the one check of every field)."""
    stored: Stored = spec.metadata["stored"]
    if value is None and spec.default is None:
        return None
    try:
        if stored.accepts(value):
            return stored.from_json(value)
        problem = f"it must be {stored.rule()}"
    except (TypeError, ValueError, AttributeError, KeyError) as error:
        problem = f"it cannot be read ({error})"
    if stored.required:
        raise ModelLoadError(f"the model's metadata has a damaged {spec.name} {value!r}: {problem}; re-save the "
                             "model with napari-unet or use another model file")
    fallback = stored.fallback
    if fallback is _FIELD_DEFAULT:
        fallback = spec.default_factory() if spec.default_factory is not MISSING else spec.default
    otherwise = stored.otherwise or ("using the default" if fallback is None else f"using {fallback!r}")
    warnings.warn(f"ignoring {spec.name} {value!r} in the model's metadata: {problem}; {otherwise}", stacklevel=3)
    return fallback


@dataclass
class ModelMetadata:
    """What prediction needs besides the weights; saved inside the .keras file (each field by its Stored rule)."""

    config: UNetConfig = _stored(default_factory=UNetConfig, read=lambda v: UNetConfig(**v), write=asdict,
                                 required=True)
    normalization: NormalizationConfig = _stored(default_factory=NormalizationConfig,
                                                 read=NormalizationConfig.from_dict, write=NormalizationConfig.to_dict,
                                                 required=True)
    class_names: list[str] = _stored(default_factory=lambda: ["foreground"], read=_names, write=list)
    # What each input channel is (e.g. red, green, blue), shown by the dock; [] = the defaults for the
    # channel count (channels.channel_names).
    channel_names: list[str] = _stored(default_factory=list, read=_names, written="input_channel_names")
    tile_size: int = _stored(default=256, **_PIXEL_COUNT)
    name: str = _stored(default="unet", read=str)
    # The flips/rotations the model was trained to be unaffected by (see SYMMETRIES); test-time
    # augmentation averages exactly these. Files without the field were trained with all 8; a name this
    # version does not know (from a newer one) means none.
    symmetries: str = _stored(default="dihedral", choices=_symmetries, fallback="none",
                              otherwise="test-time augmentation will use the image as it is")
    # (dy, dx) in px, each within [-1, 1]: prediction moves the probability map by this after
    # test-time augmentation, because some annotators draw consistently off the structure (the ISBI
    # masks sit ~0.5 px above the membranes) and a model trained with rotations cannot learn that.
    # Fitted on validation data by calibration.fit_output_offset; (0, 0) for files without it.
    output_offset: tuple[float, float] = _stored(default=(0.0, 0.0), low=-1.0, high=1.0, count=2, otherwise="no offset",
                                                 noun="two numbers of px (dy, dx)")
    # How the output becomes instances (instances.INSTANCE_METHODS): "components" (foreground blobs,
    # touching ones split on the distance transform), "enclosed" (a boundary model: the regions between
    # boundaries), "boundary_watershed" (3 classes background/interior/boundary: seeded watershed), "classes"
    # (background and several classes painted as label values 1..n; object_classes are split into instances).
    # "" = decide from the class names, as files without the field were meant.
    instances: str = _stored(default="", choices=_instance_methods, written="instance_method",
                             otherwise="instances will be taken from the class names")
    # boundary_watershed: how sure of "interior" a seed must be (chosen on validation images by the recipe;
    # None: instances.SEED_THRESHOLD).
    seed_threshold: float | None = _stored(default=None, **_PROBABILITY)
    # Multi-class models: a pixel belongs to an object when P(background) is below this (chosen on validation
    # images by the recipe); None: when background is not the most probable class.
    background_threshold: float | None = _stored(default=None, **_PROBABILITY)
    # Instances: objects smaller than min_size px are dropped, and boundary_watershed seeds smaller than
    # min_seed_size px are noise (both chosen on validation images by the recipe; None: the defaults,
    # postprocess.MIN_OBJECT_SIZE and instances.MIN_SEED_SIZE).
    min_size: int | None = _stored(default=None, **_PIXEL_COUNT)
    min_seed_size: int | None = _stored(default=None, **_PIXEL_COUNT)
    # boundary_watershed: touching objects whose shared border's mean boundary probability is below this are one
    # object (instances.merge_weak_borders; chosen on validation by the recipe; None: no merging).
    merge_threshold: float | None = _stored(default=None, **_PROBABILITY)
    # boundary_watershed: the px of boundary each of two touching objects gets in the training targets (1: the
    # objects' outer rings; instances.boundary_targets). Stored so that fine-tuning derives the targets the
    # model was trained on.
    touching_width: int = _stored(default=1, **_PIXEL_COUNT)
    # boundary_watershed: > 0: the interior class is only each object's core, its pixels at least this fraction of
    # the object's largest depth from its edge (instances.object_cores); 0: all but the boundary ring.
    core_fraction: float = _stored(default=0.0, low=0.0, high=1.0, ends="[)", noun="a fraction")
    # instances "classes" (a softmax head: background, then one output per class): the names of the classes whose
    # connected regions are objects to separate into instances; the other classes are regions (e.g. cytoplasm).
    object_classes: list[str] = _stored(default_factory=list, read=_names, write=list)
    # instances "classes": True when, after background and the classes, the output has one more channel per object
    # class (in class order), the outer part of its objects (instances.boundary_targets with touching_width and
    # core_fraction), so that touching objects of a class separate by a seeded watershed from their cores as a
    # boundary_watershed model's do. The class's own channel is then its objects' cores; a pixel's probability of
    # the class is the sum of the two (postprocess.class_probabilities).
    object_boundaries: bool = _stored(default=False, read=bool)
    # Free-form provenance: training data, metrics, parent version; shown in model lists.
    info: dict = _stored(default_factory=dict, read=dict)

    def to_dict(self) -> dict:
        """The JSON stored in the .keras file: every field, as its Stored rule writes it."""
        values = {"format": METADATA_FORMAT}
        for spec in fields(self):
            stored = spec.metadata["stored"]
            values[spec.name] = stored.to_json(getattr(self, stored.written or spec.name))
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ModelMetadata":
        """Read the stored JSON: a missing field takes its default, and so does a damaged one (with a warning
        naming the field and its rule), so a file from an older or newer version still loads."""
        return cls(**{spec.name: _read_stored(spec, values[spec.name]) for spec in fields(cls) if spec.name in values})

    @property
    def input_channel_names(self) -> list[str]:
        """One name per input channel: the stored ones when they fit the channel count, else the defaults."""
        from napari_unet.inference.channels import channel_names

        if len(self.channel_names) == self.config.n_channels:
            return list(self.channel_names)
        return channel_names(self.config.n_channels)

    @property
    def instance_method(self) -> str:
        """The stored method, else the one the class names imply (boundary names: the enclosed regions)."""
        if self.instances:
            return self.instances
        from napari_unet.labels.postprocess import objects_are_background

        return "enclosed" if objects_are_background(self.class_names) else "components"

    @property
    def classes(self) -> list[str]:
        """The classes a user paints and gets back (label values 1, 2 …): a "classes" model's outputs after
        background; one name for any other model (its foreground, whatever its outputs are for)."""
        if self.instance_method == "classes":
            return list(self.class_names[1:len(self.class_names) - len(self.boundary_outputs)])
        if self.instance_method == "boundary_watershed" and len(self.class_names) > 1:
            return [self.class_names[1]]
        return [(self.class_names or ["foreground"])[0]]

    @property
    def object_class_values(self) -> list[int]:
        """Label values (1..n) of the classes whose objects are separated into instances ("classes" models)."""
        return [index for index, name in enumerate(self.classes, start=1) if name in self.object_classes]

    @property
    def boundary_outputs(self) -> list[int]:
        """Output channels of the object classes' boundaries, one per object class value in object_class_values'
        order (a "classes" model with object_boundaries; [] for any other)."""
        if self.instance_method != "classes" or not self.object_boundaries:
            return []
        return list(range(len(self.class_names) - len(self.object_classes), len(self.class_names)))

    @property
    def class_outputs(self) -> int:
        """How many probabilities a pixel has once a model's output is read as classes: background and one per
        class for a model of several (its boundary outputs added to their classes), else its output channels."""
        if self.instance_method == "classes":
            return len(self.classes) + 1
        return self.config.n_classes


@dataclass
class SegmentationModel:
    """A Keras U-Net with its metadata; what load_model returns and predict/finetune take."""

    keras_model: "object"
    metadata: ModelMetadata
    source: str = ""  # where it was loaded from (path or shipped/stored name), for messages
    # The network a volume's XZ and YZ planes are predicted with when it is seen from three views (None: this one).
    # A round on a volume keeps its parent's: corrections on XY planes change what a network predicts on the side
    # views it was not shown, and the three views' mean then joins stacked nuclei (docs/volumes-and-time.md).
    side_views: "SegmentationModel | None" = None

    @property
    def config(self) -> UNetConfig:
        return self.metadata.config

    @property
    def name(self) -> str:
        return self.metadata.name

    def copy(self, clone_function=None) -> "SegmentationModel":
        """An independent copy (same weights, new variables) so training never touches the original.

        clone_function: Keras' hook to change each cloned layer (precision.copy_in sets dtype policies)."""
        import keras

        clone = keras.models.clone_model(self.keras_model, clone_function=clone_function)
        clone.set_weights(self.keras_model.get_weights())
        return SegmentationModel(clone, replace(self.metadata, info=dict(self.metadata.info)), self.source,
                                 self.side_views)  # never trained: shared

    @property
    def side_view_model(self) -> "SegmentationModel":
        """The model that predicts a volume's XZ and YZ planes in three views (this one unless side_views reads the
        same input and gives the same outputs)."""
        side = self.side_views
        return side if side is not None and side.config == self.config else self


def _conv_block(x, width: int, config: UNetConfig, prefix: str):
    from keras import layers

    for i in (1, 2):
        x = layers.Conv2D(width, 3, padding="same", use_bias=not config.batch_norm, name=f"{prefix}_conv{i}")(x)
        if config.batch_norm:
            x = layers.BatchNormalization(name=f"{prefix}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{prefix}_relu{i}")(x)
    return x


def build_unet(config: UNetConfig = UNetConfig()):
    """A Keras functional U-Net taking (batch, H, W, n_channels) with H, W multiples of 2**depth."""
    import keras
    from keras import layers

    inputs = keras.Input(shape=(None, None, config.n_channels), name="image")
    x = inputs
    skips = []
    for level in range(config.depth):
        x = _conv_block(x, config.base_width * 2**level, config, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = _conv_block(x, config.base_width * 2**config.depth, config, "bottleneck")
    if config.dropout > 0:
        x = layers.Dropout(config.dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(config.depth)):
        width = config.base_width * 2**level
        if config.upsampling == "transpose":
            x = layers.Conv2DTranspose(width, 2, strides=2, name=f"dec{level}_up")(x)
        else:
            x = layers.UpSampling2D(2, interpolation="bilinear", name=f"dec{level}_up")(x)
            x = layers.Conv2D(width, 2, padding="same", activation="relu", name=f"dec{level}_upconv")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([skips[level], x])
        x = _conv_block(x, width, config, f"dec{level}")
    if config.n_classes == 1:
        outputs = layers.Conv2D(1, 1, activation="sigmoid", name="probabilities", dtype="float32")(x)
    else:
        outputs = layers.Conv2D(config.n_classes, 1, activation="softmax", name="probabilities", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="unet")


def new_model(config: UNetConfig = UNetConfig(), **metadata) -> SegmentationModel:
    """A freshly initialised model with metadata (class names, tile size, name...)."""
    metadata.setdefault(
        "class_names", ["foreground"] if config.n_classes == 1 else [f"class {i}" for i in range(config.n_classes)]
    )
    meta = ModelMetadata(config=config, **metadata)
    return SegmentationModel(build_unet(config), meta)


def _output_keys(metadata: ModelMetadata, object_classes: list[str]) -> list[tuple[str, ...]]:
    """What each output channel of a model is, as with_classes matches them: ("background",), ("class", name) or
    ("boundary", name). A boundary_watershed model's interior and boundary are those of the project's object class
    of its class's name, else of the first object class; other models have no output a class could keep."""
    if metadata.instance_method == "classes":
        objects = [name for name in metadata.classes if name in metadata.object_classes]
        return [("background",), *[("class", name) for name in metadata.classes],
                *[("boundary", name) for name in (objects if metadata.object_boundaries else [])]]
    if metadata.instance_method == "boundary_watershed" and object_classes:
        known = metadata.classes[0]
        matched = known if known in object_classes else object_classes[0]
        return [("background",), ("class", matched), ("boundary", matched)]
    return []


def with_classes(model: SegmentationModel, class_names: list[str], object_classes: list[str],
                 seed: int = 0) -> SegmentationModel:
    """`model` with a softmax head for these classes (after background), keeping its encoder and decoder.

    A model that already has exactly these outputs is returned as it is. Otherwise its last layer is replaced by
    a new 1x1 convolution with an output for background, each class and, when the model separates objects with a
    boundary output (a boundary_watershed model, or a model of several classes with object_boundaries), the boundary
    of each object class (ModelMetadata.object_boundaries). The new outputs are freshly initialised except those the
    model had: background, the classes of the same name and their boundaries (a class added later does not make the
    model forget the others), and a boundary_watershed model's interior and boundary as the object class's core and
    boundary (_output_keys), so a project of several classes starts with the instance separation its start model
    had. Its metadata (and so the card of the version trained from it) records that. Only models built by
    build_unet can be re-headed.
    seed: the new layer's initial weights (so a repeated round starts from the same ones)."""
    import keras

    from napari_unet.errors import NapariUNetError

    metadata = model.metadata
    object_classes = [name for name in class_names if name in object_classes]
    boundaries = metadata.instance_method == "boundary_watershed" or (
        metadata.instance_method == "classes" and metadata.object_boundaries)
    wanted = [("background",), *[("class", name) for name in class_names],
              *[("boundary", name) for name in (object_classes if boundaries else [])]]
    old_keys = _output_keys(metadata, object_classes)
    if metadata.instance_method == "classes" and old_keys == wanted:
        if list(metadata.object_classes) == object_classes:
            return model
        return SegmentationModel(model.keras_model, replace(metadata, object_classes=object_classes,
                                                            info=dict(metadata.info)), model.source)
    config = replace(model.config, n_classes=len(wanted))
    keras.utils.set_random_seed(seed)
    keras_model = build_unet(config)
    old_names = [layer.name for layer in model.keras_model.layers]
    if old_names != [layer.name for layer in keras_model.layers]:
        raise NapariUNetError(f"model '{model.source or model.name}' is not a napari-unet U-Net, so its output layer "
                              "cannot be replaced for new classes: start the project from a napari-unet model")
    for layer in keras_model.layers:
        if layer.name != "probabilities":
            layer.set_weights(model.keras_model.get_layer(layer.name).get_weights())
    kernel, bias = keras_model.get_layer("probabilities").get_weights()
    old_kernel, old_bias = model.keras_model.get_layer("probabilities").get_weights()
    old_index = {key: index for index, key in enumerate(old_keys)}
    kept = []
    for index, key in enumerate(wanted):  # what the model already knows stays learned
        if key in old_index:
            kernel[..., index], bias[index] = old_kernel[..., old_index[key]], old_bias[old_index[key]]
            kept.append(" ".join(reversed(key)) if key[0] == "boundary" else key[-1])
    keras_model.get_layer("probabilities").set_weights([kernel, bias])
    parent = model.source or model.name
    from_boundaries = metadata.instance_method == "boundary_watershed" and kept
    info = {"new_output_layer": {  # a new model: nothing of the parent's card applies to it
        "from": parent, "parent_classes": metadata.classes, "classes": list(class_names),
        "note": f"new output layer for {len(class_names)} classes; encoder and decoder kept from '{parent}'"
                + (f"; its outputs for {', '.join(kept)} kept" if kept else "")
                + (f" (from its {metadata.class_names[1]} and {metadata.class_names[2]})" if from_boundaries else "")}}
    names = ["background", *class_names, *[f"{name} boundary" for name in (object_classes if boundaries else [])]]
    kept_settings = {} if boundaries else {"seed_threshold": None, "merge_threshold": None, "min_seed_size": None}
    new_metadata = replace(metadata, config=config, class_names=names, instances="classes",
                           object_classes=object_classes, object_boundaries=boundaries, background_threshold=None,
                           output_offset=(0.0, 0.0), info=info, **kept_settings)
    return SegmentationModel(keras_model, new_metadata, model.source)


def with_renamed_classes(model: SegmentationModel, renamed: list[tuple[str, str]]) -> SegmentationModel:
    """`model` with its classes called by their new names ((old, new) pairs, oldest first: a project's renamed
    classes), and its object classes' boundary outputs with them; the same weights. As it is without a rename."""
    metadata = model.metadata
    names, objects = list(metadata.class_names), list(metadata.object_classes)
    boundaries = {index: names[index] for index in metadata.boundary_outputs}
    for old, new in renamed:
        names = [new if name == old else name for name in names]
        objects = [new if name == old else name for name in objects]
    if names == metadata.class_names and objects == metadata.object_classes:
        return model
    in_order = [name for name in names[1:len(names) - len(boundaries)] if name in objects]
    for index, name in zip(boundaries, in_order):  # boundary outputs follow their object classes, in class order
        names[index] = f"{name} boundary"
    return SegmentationModel(model.keras_model, replace(metadata, class_names=names, object_classes=objects,
                                                        info=dict(metadata.info)), model.source, model.side_views)


def unet_flops(config: UNetConfig, height: int, width: int) -> float:
    """Forward FLOPs (2 x multiply-adds of convs and transposed convs) for one (height, width) input."""
    flops = 0.0
    h, w = height, width
    c_in = config.n_channels
    for level in range(config.depth):
        c = config.base_width * 2**level
        flops += 2 * h * w * 9 * (c_in * c + c * c)
        c_in = c
        h, w = h // 2, w // 2
    c = config.base_width * 2**config.depth
    flops += 2 * h * w * 9 * (c_in * c + c * c)
    c_in = c
    for level in reversed(range(config.depth)):
        c = config.base_width * 2**level
        h, w = h * 2, w * 2
        if config.upsampling == "transpose":
            flops += 2 * h * w * c_in * c  # each input pixel feeds one 2x2 output block
        else:
            flops += 2 * h * w * 4 * c_in * c  # 2x2 conv after bilinear upsampling
        flops += 2 * h * w * 9 * (2 * c * c + c * c)
        c_in = c
    flops += 2 * h * w * c_in * config.n_classes
    return flops


def save_model(model: SegmentationModel, path: str | os.PathLike) -> Path:
    """Save atomically: write a temporary .keras next to the target, add metadata, then rename.

    A process killed mid-save leaves any previous file at `path` intact.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelLoadError(f"model files must end in .keras, not {path.name!r}: choose a name like 'model.keras'")

    def write(name: str) -> None:
        model.keras_model.save(name)
        side = None
        if model.side_views is not None:  # inside the same file, so it follows the version wherever it goes
            side = Path(name).with_name(Path(name).stem + "-side.keras")
            save_model(SegmentationModel(model.side_views.keras_model, model.side_views.metadata), side)
        try:
            with zipfile.ZipFile(name, "a") as archive:
                archive.writestr(METADATA_ENTRY, json.dumps(model.metadata.to_dict(), indent=2))
                if side is not None:
                    archive.write(side, SIDE_VIEWS_ENTRY)
        finally:
            if side is not None:
                side.unlink(missing_ok=True)

    return atomic_write(path, write, ".keras")


def has_side_views(path: str | os.PathLike) -> bool:
    """Whether a .keras file holds a network of its own for a volume's side views (SegmentationModel.side_views)."""
    with zipfile.ZipFile(path) as archive:
        return SIDE_VIEWS_ENTRY in archive.namelist()


def read_metadata(path: str | os.PathLike) -> ModelMetadata | None:
    """The napari-unet metadata stored in a .keras file, or None for a plain Keras file."""
    with zipfile.ZipFile(path) as archive:
        if METADATA_ENTRY not in archive.namelist():
            return None
        return ModelMetadata.from_dict(json.loads(archive.read(METADATA_ENTRY)))


def load_model_file(path: str | os.PathLike) -> SegmentationModel:
    """Load a .keras file in Keras safe mode; errors name the file and what to do."""
    import keras

    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file '{path}' does not exist: check the path or pick a model from 'napari-unet models'")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"'{path}' is not a valid .keras model file (corrupt or another format): re-export or re-train it")
    try:
        metadata = read_metadata(path)
        keras_model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types; the user needs one message
        text = str(exc)
        if "Lambda" in text or "safe_mode" in text or "unsafe" in text.lower():
            raise ModelLoadError(
                f"'{path}' contains a Lambda layer (arbitrary Python code), which napari-unet refuses to load "
                "for safety: rebuild the model without Lambda layers"
            ) from exc
        raise ModelLoadError(f"could not load model '{path}': {text.splitlines()[0] if text else type(exc).__name__}") from exc
    if metadata is None:
        # A plain Keras segmentation model: infer what we can from its input.
        n_channels = int(keras_model.input_shape[-1] or 1)
        n_classes = int(keras_model.output_shape[-1] or 1)
        metadata = ModelMetadata(config=UNetConfig(n_channels=n_channels, n_classes=n_classes), name=path.stem)
    return SegmentationModel(keras_model, metadata, source=str(path), side_views=_load_side_views(path))


def _load_side_views(path: Path) -> SegmentationModel | None:
    """The side views' network stored inside a .keras file (save_model), or None."""
    import tempfile

    with zipfile.ZipFile(path) as archive:
        if SIDE_VIEWS_ENTRY not in archive.namelist():
            return None
        with tempfile.TemporaryDirectory() as folder:
            inner = Path(folder) / "side_views.keras"
            inner.write_bytes(archive.read(SIDE_VIEWS_ENTRY))
            side = load_model_file(inner)
    side.source = f"{path} (side views)"
    return side


def inference_function(keras_model, config: UNetConfig):
    """`keras_model(batch, training=False)` for a build_unet model, rearranged for speed on CPU; None for any
    other architecture (e.g. an imported bioimage.io model), which then runs as Keras builds it.

    Same numbers to float rounding, ~1.2x faster on a width-16 model (benchmarks/README, "inference graph"):
    batch norm is folded into the conv before it, so conv + bias + ReLU fuse into one oneDNN op; the
    decoder's concatenation becomes two convs summed (no copy of the skip connection, +3 %); the softmax
    over a few classes is written out, because TensorFlow's took 7 % of the forward pass. The folding reads
    the variables at every call, so a model trained in place (the live loop) is predicted exactly, and the
    model's dtype policy (bfloat16) holds.
    """
    if tuple((layer.name, type(layer)) for layer in keras_model.layers) != _unet_layers(config):
        return None
    return _InferenceGraph(keras_model, config)


@functools.lru_cache(maxsize=8)
def _unet_layers(config: UNetConfig) -> tuple:
    """(name, class) of every layer build_unet makes for `config` (0.1 s, once per config): a model is rearranged
    only if it has exactly these."""
    return tuple((layer.name, type(layer)) for layer in build_unet(config).layers)


class _InferenceGraph:
    """The callable inference_function returns (a class, so tf.function traces plain methods)."""

    def __init__(self, keras_model, config: UNetConfig):
        self.config = config
        self.layer = keras_model.get_layer
        self.dtype = self.layer("enc0_conv1").compute_dtype

    def _kernel_and_bias(self, name):
        import tensorflow as tf

        conv = self.layer(name)
        kernel = tf.convert_to_tensor(conv.kernel, tf.float32)
        if not self.config.batch_norm:
            return tf.cast(kernel, self.dtype), tf.cast(conv.bias, self.dtype)
        norm = self.layer(name.replace("_conv", "_bn"))
        scale = tf.cast(norm.gamma, tf.float32) * tf.math.rsqrt(tf.cast(norm.moving_variance, tf.float32) + norm.epsilon)
        bias = tf.cast(norm.beta, tf.float32) - tf.cast(norm.moving_mean, tf.float32) * scale
        return tf.cast(kernel * scale, self.dtype), tf.cast(bias, self.dtype)

    def _conv(self, x, name, skip=None):
        """conv + (folded norm) + ReLU; with `skip`, of the concatenation [skip, x] without making it."""
        import tensorflow as tf

        kernel, bias = self._kernel_and_bias(name)
        if skip is None:
            return tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME"), bias))
        channels = skip.shape[-1]
        from_x = tf.nn.conv2d(x, kernel[:, :, channels:], 1, "SAME")
        return tf.nn.relu(from_x + tf.nn.bias_add(tf.nn.conv2d(skip, kernel[:, :, :channels], 1, "SAME"), bias))

    def _up(self, x, level):
        x = self.layer(f"dec{level}_up")(x)
        return x if self.config.upsampling == "transpose" else self.layer(f"dec{level}_upconv")(x)

    def __call__(self, batch):
        import tensorflow as tf

        x = tf.cast(batch, self.dtype)
        skips = []
        for level in range(self.config.depth):
            x = self._conv(self._conv(x, f"enc{level}_conv1"), f"enc{level}_conv2")
            skips.append(x)
            x = tf.nn.max_pool2d(x, 2, 2, "VALID")
        x = self._conv(self._conv(x, "bottleneck_conv1"), "bottleneck_conv2")
        for level in reversed(range(self.config.depth)):
            x = self._conv(self._up(x, level), f"dec{level}_conv1", skip=skips[level])
            x = self._conv(x, f"dec{level}_conv2")
        head = self.layer("probabilities")
        kernel = tf.cast(head.kernel, tf.float32)
        logits = tf.nn.bias_add(tf.nn.conv2d(tf.cast(x, tf.float32), kernel, 1, "SAME"), tf.cast(head.bias, tf.float32))
        if self.config.n_classes == 1:
            return tf.sigmoid(logits)
        exp = tf.exp(logits - tf.reduce_max(logits, axis=-1, keepdims=True))
        return exp / tf.reduce_sum(exp, axis=-1, keepdims=True)
