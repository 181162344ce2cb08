"""The ops-api's handles on Redis, S3, Qdrant and the face models, opened lazily and shared.

In local mode the indexer runs in the same process (the embedded store, Qdrant Edge,
lets one process hold its folder) and passes its :class:`VectorIndex` in, so both use
one; elsewhere the ops-api opens its own.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import TYPE_CHECKING

import redis

from facepipe.core.settings import Settings
from facepipe.core.stats import Stats
from facepipe.store.dedup import DedupCache
from facepipe.store.storage import ObjectStore

if TYPE_CHECKING:
    from facepipe.ops_api.search import SearchModels
    from facepipe.store.vectors import VectorIndex

log = logging.getLogger("facepipe.ops_api")

# Short enough that /ready and /stats answer quickly when Redis is gone.
REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 3.0


class OpsBackend:
    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis | None = None,
        index: VectorIndex | None = None,
        models: SearchModels | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis_client or redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            health_check_interval=30,
        )
        self.stats = Stats(self.redis, stage="ops-api")
        self.dedup = DedupCache(self.redis, settings)
        self.store = ObjectStore(settings)
        self._index = index
        self._owns_index = index is None
        self._models: SearchModels | None = models
        self._lock = threading.Lock()
        self.dedup_stats_cache: tuple[float, dict[str, int]] | None = None  # (monotonic time, stats)

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            with self._lock:
                if self._index is None:
                    from facepipe.store.vectors import VectorIndex

                    self._index = VectorIndex(self.settings)
        return self._index

    @property
    def models(self) -> SearchModels:
        """The detector and recognizer of MODEL_PACK, loaded on first use (search, /ready)."""
        if self._models is None:
            with self._lock:
                if self._models is None:
                    from facepipe.ops_api.search import SearchModels

                    self._models = SearchModels.load(self.settings)
                    log.info("models loaded: pack %s on %s", self.settings.model_pack, self._models.provider)
        return self._models

    @property
    def models_loaded(self) -> SearchModels | None:
        return self._models

    def close(self) -> None:
        if self._owns_index and self._index is not None:
            with contextlib.suppress(Exception):
                self._index.close()
        with contextlib.suppress(Exception):
            self.redis.close()
