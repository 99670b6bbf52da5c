"""`python -m napari_unet.cli`: the same as the `napari-unet` command."""

import sys

from napari_unet.cli import main

sys.exit(main())
