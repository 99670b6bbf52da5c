"""What is kept on disk: images and masks, model versions and their records, the shipped models, name
resolution, bioimage.io packages, and atomic writes."""
