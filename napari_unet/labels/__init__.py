"""What labels mean: the user's masks and classes as training targets, and probabilities turned into semantic
labels, instances and objects across the planes of a stack."""
