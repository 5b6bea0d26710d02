"""Face-recognition models used to measure utility (labels) and to evaluate EDC curves."""
