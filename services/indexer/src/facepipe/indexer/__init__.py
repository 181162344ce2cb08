"""The indexer stage: dedup commit, S3 artifacts, Qdrant upsert (``python -m facepipe.indexer``)."""

from facepipe.indexer.handler import IndexerHandler

__all__ = ["IndexerHandler"]
