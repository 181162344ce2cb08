"""Detector stage of face-pipeline: ingest stream → faces with aligned crops → detected stream."""
