"""embedder package of face-pipeline."""
