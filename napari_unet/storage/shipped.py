"""The models that come with the package: name → .keras file and model card. A leaf: imports nothing of ours."""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODELS_DIR = Path(__file__).parents[1] / "models"  # napari_unet/models


def shipped_model_names() -> list[str]:
    """Names of the read-only models that come with the package (e.g. 'membranes', 'nuclei')."""
    return sorted(p.stem for p in SHIPPED_MODELS_DIR.glob("*.keras") if "." not in p.stem)


def shipped_model_path(name: str) -> Path:
    return SHIPPED_MODELS_DIR / f"{name}.keras"


def shipped_card_path(name: str) -> Path:
    return SHIPPED_MODELS_DIR / f"{name}.json"
