"""ops_api package of face-pipeline."""
