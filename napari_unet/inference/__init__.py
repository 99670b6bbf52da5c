"""From an image to probabilities: normalisation, channels, tiling, precision, the engines (TensorFlow, ONNX
Runtime, dask), larger-than-memory output and uncertainty."""
