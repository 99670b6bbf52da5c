"""Rebuild the models napari-unet ships and their model cards: the recipes are napari_unet/training/recipes.py.

    .venv/bin/python scripts/train_shipped_models.py membranes        # one recipe
    .venv/bin/python scripts/train_shipped_models.py --list           # what recipes exist
    .venv/bin/python scripts/train_shipped_models.py membranes --recalibrate   # no training
"""

import sys

from napari_unet.training.recipes import main

if __name__ == "__main__":
    sys.exit(main())
