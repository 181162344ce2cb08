"""cli package of face-pipeline."""
