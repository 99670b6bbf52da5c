"""How good a model is: segmentation metrics, evaluation on annotated images, and the one "did it help?" rule."""
