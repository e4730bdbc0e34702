"""Decoding (modelhub.decoding): token probabilities and stop strings."""
