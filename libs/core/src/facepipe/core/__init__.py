"""common package of face-pipeline."""
