"""indexer package of face-pipeline."""
