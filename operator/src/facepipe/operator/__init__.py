"""operator package of face-pipeline."""
