"""Embedder stage of face-pipeline: detected stream → batched face embeddings → embedded stream."""
