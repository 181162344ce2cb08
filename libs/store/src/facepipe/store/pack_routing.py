"""Which collection the indexer writes a face's vector into, given the pack that embedded it.

Vectors of each pack live in their own collection, so a message is never refused for
being of "the wrong pack" while a tenant changes packs. For a message of tenant T embedded
with pack P, the indexer writes into:

1. the collection T searches, when its vectors are P's (the usual case; also the old pods'
   messages while a migration away from P runs: the backfill catches them up);
2. else P's own collection, when P is this indexer's MODEL_PACK: the new pods of a pack
   change index new faces there at once; they become searchable when the backfill switches;
3. else nowhere: the message goes back to the embedder to be embedded with the pack this
   indexer serves (a message from a pack being rolled out of the cluster, or a DLQ replay of
   an old one), so no face is lost.

A tenant seen for the first time is pinned (:meth:`VectorIndex.pin_route`), and the pack it
searches with is noted in its migration record for the operator.
"""

from __future__ import annotations

import threading

from facepipe.core.packs import ModelPack
from facepipe.store.pack_migration import MigrationRecords
from facepipe.store.vectors import VectorIndex
from facepipe.store.vectors.points import Route


class PackRouter:
    def __init__(
        self, index: VectorIndex, own_pack: ModelPack, records: MigrationRecords | None = None
    ) -> None:
        self.index = index
        self.own_pack = own_pack
        self.records = records
        self._own_collection: str | None = None
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def collection_for(self, tenant: str, pack: ModelPack) -> str | None:
        """The collection for ``tenant``'s vectors of ``pack``; None: embed the message again."""
        route = self.route(tenant)
        if route.pack == pack:
            return route.collection
        if route.pack is None and self.index.view(route.collection).vector_size() == pack.dim:
            return route.collection  # a base collection no point of which names its pack
        if pack == self.own_pack:
            return self.own_collection()
        return None

    def route(self, tenant: str) -> Route:
        route = self.index.route(tenant)
        if route.pinned and tenant in self._seen:
            return route
        with self._lock:  # concurrent messages of a new tenant pin it once
            route = self.index.pin_route(tenant, self.own_pack)
            if tenant not in self._seen and self.records is not None and route.pack is not None:
                self.records.note_active(tenant, route.pack.name)
            self._seen.add(tenant)
        return route

    def own_collection(self) -> str:
        if self._own_collection is None:
            self._own_collection = self.index.ensure_pack_collection(self.own_pack)
        return self._own_collection
