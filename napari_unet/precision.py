"""Which float precision the U-Net runs in on this CPU: bfloat16 where the hardware has it, else float32.

bfloat16 keeps float32's exponent range with an 8-bit mantissa; CPUs with AMX (Intel Sapphire Rapids and
later) run its matrix products ~2.4x the float32 rate, and AVX512-BF16 (AMD Zen 4, Intel Cooper Lake) ~1.4-2x
(benchmarks/bench_precision.py: the U-Net's forward pass 1.1-1.4x, its training step 1.1-1.9x on a Zen 4).
Weights stay float32 (Keras' mixed_bfloat16 policy) and the probabilities are float32, so a bfloat16 model
reads and writes the same files.
The choice is detected, never assumed: NAPARI_UNET_PRECISION=float32|bfloat16 overrides it.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

PRECISIONS = ("float32", "bfloat16")
ENVIRONMENT_VARIABLE = "NAPARI_UNET_PRECISION"


@lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """The bfloat16-related flags of this CPU (Linux /proc/cpuinfo; empty where unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return frozenset(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    return frozenset()


def default_precision() -> str:
    """bfloat16 where the CPU computes it natively (AMX or AVX512-BF16), else float32; the environment
    variable wins. Elsewhere bfloat16 is emulated and slower than float32."""
    chosen = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if chosen in PRECISIONS:
        return chosen
    return "bfloat16" if cpu_features() & {"amx_bf16", "avx512_bf16"} else "float32"


def resolve(precision: str | None) -> str:
    """None or "auto" -> default_precision(); otherwise checked."""
    from napari_unet.errors import NapariUNetError

    if precision in (None, "auto"):
        return default_precision()
    if precision not in PRECISIONS:
        raise NapariUNetError(f"precision {precision!r} is not one of auto, {', '.join(PRECISIONS)}")
    return precision


def computes_in(keras_model) -> str:
    """The precision a U-Net's convolutions compute in."""
    first_conv = next(layer for layer in keras_model.layers if layer.name.endswith("_conv1"))
    return "bfloat16" if first_conv.compute_dtype == "bfloat16" else "float32"


def copy_in(model, precision: str | None):
    """An independent copy of `model` (new variables, same weights, a copy of the metadata) computing in
    `precision`: one model build, where a clone followed by a precision change would make two."""
    from dataclasses import replace

    from napari_unet.model import SegmentationModel, build_unet

    precision = resolve(precision)
    keras_model = build_unet(model.config, dtype_policy="mixed_bfloat16" if precision == "bfloat16" else None)
    keras_model.set_weights(model.keras_model.get_weights())
    return SegmentationModel(keras_model, replace(model.metadata, info=dict(model.metadata.info)), model.source)


def with_precision(model, precision: str | None):
    """`model` itself when it already computes in `precision`, else a twin (same weights and metadata).

    The twin is cached on the model (a fine-tuned copy is a new model, so it gets its own). Its weights are
    a copy taken once: code that changes a model's weights in place (the training loop) must predict that
    model in its own precision, which returns the model itself.
    """
    precision = resolve(precision)
    if computes_in(model.keras_model) == precision:
        return model
    cached = model.__dict__.get("_twin")
    if cached is not None and cached[0] is model.keras_model:
        return cached[1]
    twin = copy_in(model, precision)
    twin.metadata = model.metadata  # the same object: a change of the offset or the class names holds for both
    model.__dict__["_twin"] = (model.keras_model, twin)
    return twin
