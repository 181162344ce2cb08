"""detector package of face-pipeline."""
