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
    """The precision a model's first layer with weights computes in (any Keras architecture)."""
    first = next(layer for layer in keras_model.layers if layer.weights)
    return "bfloat16" if first.compute_dtype == "bfloat16" else "float32"


def copy_in(model, precision: str | None):
    """An independent copy of `model` (new variables, same weights, a copy of the metadata) computing in
    `precision`. Works for any Keras architecture (a bioimage.io package need not hold our U-Net): every layer
    but the input and the last gets the precision's dtype policy, so the output stays float32."""
    import keras

    precision = resolve(precision)
    if computes_in(model.keras_model) == precision:
        return model.copy()
    policy = "mixed_bfloat16" if precision == "bfloat16" else "float32"
    last = model.keras_model.layers[-1]

    def with_policy(layer):
        config = layer.get_config()
        if layer is not last and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    return model.copy(clone_function=with_policy)


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
