"""Move one tenant's searches to another model pack: backfill, switch, catch up; or roll back.

``Reembedder(settings, tenant, pack, ...).run()`` makes the tenant search with ``pack``:

1. **Backfill.** The pack's collection is created (the pipeline's pods of the new pack
   already write new faces into it). Every face of the tenant in the collection it searches
   now (and in an abandoned earlier target) that the new collection lacks is read page by
   page, its crop fetched from S3 and embedded with the new pack, and upserted with the same
   point id. After each page the resume point and the counts go to the tenant's record
   (:mod:`facepipe.store.pack_migration`), so a run killed at any moment resumes there;
   upserts overwrite by id, so nothing is ever doubled.
2. **Catch-up and switch.** One more pass from the start finds what was indexed into the old
   collection meanwhile (old pods still running); then the tenant's alias moves to the new
   collection in one step. Until that moment every search answers from the old collection
   with the old pack's query embedder; from then on from the new one.
3. **Settle.** Other processes trust the aliases they read for ``ROUTES_TTL_S``; after
   waiting longer than that, a last catch-up picks up faces a stale indexer still wrote into
   the old collection. The old collection keeps the tenant's faces for ``retain_hours`` (a
   change back is then a short catch-up), then a later run removes them.

A run for the pack the tenant already searches with, while a migration to another pack is
unfinished, is a **rollback**: the faces that reached only the abandoned collection (indexed
by the new pods meanwhile) are embedded with the current pack, and the abandoned collection
loses the tenant's points. One run at a time per tenant (a Redis lock).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import redis

from facepipe.core.packs import ModelPack, get_pack
from facepipe.core.settings import Settings
from facepipe.ops_api.reembed.crops import CropEmbedder
from facepipe.ops_api.reembed.options import ReembedOptions
from facepipe.store.pack_migration import (
    BACKFILLING,
    COMPLETE,
    ISO_FORMAT,
    ROLLED_BACK,
    ROLLING_BACK,
    SWITCHED,
    MigrationRecords,
    MigrationState,
    Retained,
    TenantLock,
    now_iso,
)
from facepipe.store.storage import ObjectStore
from facepipe.store.vectors import FacePoint, VectorIndex
from facepipe.store.vectors.points import Route
from facepipe.vision.models import FaceEmbedder

log = logging.getLogger("facepipe.reembed")


@dataclass(frozen=True)
class ReembedReport:
    tenant: str
    pack: str
    action: str  # "migrated", "rolled back", "already active"
    migrated: int  # the tenant's faces in the pack's collection at the end
    embedded: int  # faces this run embedded
    skipped: int  # faces whose crop was gone (deleted meanwhile)
    seconds: float

    @property
    def faces_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[MigrationState], None]


class Reembedder:
    def __init__(
        self,
        settings: Settings,
        tenant: str,
        pack: str,
        *,
        index: VectorIndex,
        store: ObjectStore,
        redis_client: redis.Redis,
        options: ReembedOptions | None = None,
        embedder: FaceEmbedder | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.tenant = tenant
        self.pack = get_pack(pack)
        self.index = index
        options = options or ReembedOptions()
        if options.max_faces_per_s > 0:
            # About a second of work per page: the load stays even instead of bursts and long pauses.
            options = replace(options, page=max(1, min(options.page, int(options.max_faces_per_s))))
        self.options = options
        self.records = MigrationRecords(redis_client, index.base)
        self.crops = CropEmbedder(
            settings,
            self.pack,
            store,
            batch=self.options.batch,
            threads=self.options.fetch_threads,
            embedder=embedder,
        )
        self.progress = progress or (lambda _state: None)
        self._lock: TenantLock | None = None
        self._offsets: dict[str, str] = {}  # this run's resume points (it alone writes them: the lock)
        self._embedded = 0
        self._skipped: set[str] = set()  # faces without a crop: each pass would meet them again
        self._skipped_before = 0  # what a killed earlier run of this migration had counted
        self._started = time.monotonic()
        self._syncing_s = 0.0  # time spent reading, embedding and writing (the rate's denominator)
        self._page_started = time.monotonic()

    # --- the run -------------------------------------------------------------------------

    def run(self) -> ReembedReport:
        self._started = time.monotonic()
        with self.records.lock(self.tenant).held(self.options.lock_wait_s) as lock:
            self._lock = lock
            self.crops.load()  # a pack whose files cannot be had fails here, before anything changes
            state = self.records.load(self.tenant) or MigrationState(self.tenant)
            route = self.index.pin_route(self.tenant, self.pack)
            if route.pack is not None and state.active != route.pack.name:
                self.records.update(self.tenant, active=route.pack.name)  # the alias is the truth
            try:
                action = self._dispatch(state, route)
            except Exception as exc:
                self.records.update(self.tenant, error=f"{type(exc).__name__}: {exc}"[:500])
                raise
        migrated = self.index.view(self.index.pack_collection(self.pack)).count(self.tenant)
        return ReembedReport(
            self.tenant,
            self.pack.name,
            action,
            migrated,
            self._embedded,
            len(self._skipped),
            time.monotonic() - self._started,
        )

    def _dispatch(self, state: MigrationState, route: Route) -> str:
        self._sweep(state, route, expired_only=True)
        if route.pack != self.pack:
            self._migrate(state, route)
            return "migrated"
        if state.target and state.target != self.pack.name and state.phase in (BACKFILLING, ROLLING_BACK):
            self._roll_back(state, route)
            return "rolled back"
        if state.target == self.pack.name and state.phase == SWITCHED:
            self._settle(state, route)  # a run killed after its switch: finish it
            return "migrated"
        log.info("tenant %s already searches with pack %s: nothing to re-embed", self.tenant, self.pack.name)
        return "already active"

    def _migrate(self, state: MigrationState, route: Route) -> None:
        target = self.index.ensure_pack_collection(self.pack)
        resuming = state.target == self.pack.name and state.phase == BACKFILLING
        self._offsets = dict(state.offsets) if resuming else {}
        self._skipped_before = state.skipped if resuming else 0
        log.info(
            "tenant %s: %s pack %s -> %s (%s to %s)",
            self.tenant,
            "resuming" if resuming else "migrating",
            _name(route.pack),
            self.pack.name,
            route.collection,
            target,
        )
        if not resuming:
            self.records.update(
                self.tenant,
                active=_name(route.pack),
                target=self.pack.name,
                phase=BACKFILLING,
                started_at=now_iso(),
                finished_at="",
                error="",
                skipped=0,
                offsets={},
            )
        sources = [route.collection] + [
            name for name in self._holding_tenant() if name not in (route.collection, target)
        ]
        for source in sources:
            self._sync(source, target, route.collection, self._offsets.get(source))
        for source in sources:  # catch-up: what the old pods indexed meanwhile
            self._sync(source, target, route.collection, None)
        kept = [r for r in state.previous if r.collection not in (route.collection, target)]
        until = (datetime.now(tz=UTC) + timedelta(hours=self.options.retain_hours)).strftime(ISO_FORMAT)
        if route.collection != target:
            kept.append(Retained(_name(route.pack), route.collection, until))
        # The record first: killed between the two steps, a new run finds the alias unmoved and
        # switches again (its passes find every face there); killed after both, it settles.
        self.records.update(self.tenant, active=self.pack.name, phase=SWITCHED, previous=kept, offsets={})
        self.index.set_route(self.tenant, target)
        log.info("tenant %s now searches %s (pack %s)", self.tenant, target, self.pack.name)
        for abandoned in sources[1:]:
            self._remove_tenant(abandoned)
        state = self.records.load(self.tenant) or state
        self._settle(state, self.index.route(self.tenant))

    def _settle(self, state: MigrationState, route: Route) -> None:
        """After the switch: wait out other processes' alias caches, then a last catch-up.

        Only from the collection just left (the last one kept): a stale indexer wrote there."""
        self._wait(self.options.settle_s)
        left = state.previous[-1].collection if state.previous else None
        if left is not None and left != route.collection:
            self._sync(left, route.collection, route.collection, None)
        self.records.update(self.tenant, phase=COMPLETE, target="", finished_at=now_iso())
        self._report(route.collection, route.collection)

    def _roll_back(self, state: MigrationState, route: Route) -> None:
        abandoned = self.index.pack_collection(get_pack(state.target))
        log.info(
            "tenant %s: rolling back the migration to %s; it stays on %s",
            self.tenant,
            state.target,
            self.pack.name,
        )
        self.records.update(self.tenant, phase=ROLLING_BACK, error="")
        # Faces the new pack's pods indexed only there: embedded again with this (the active) pack.
        self._sync(abandoned, route.collection, route.collection, None)
        self._remove_tenant(abandoned)
        self.records.update(self.tenant, phase=ROLLED_BACK, target="", finished_at=now_iso(), offsets={})
        self._report(route.collection, route.collection)

    # --- one pass: every face of ``source`` that ``target`` lacks --------------------------

    def _sync(self, source: str, target: str, active: str, offset: str | None) -> None:
        origin, destination = self.index.view(source), self.index.view(target)
        self._page_started = time.monotonic()
        while True:
            self._renew()
            hits, next_offset = origin.scroll_page(self.tenant, self.options.page, offset)
            present = destination.existing_ids(hit.id for hit in hits) | self._skipped
            points, skipped = self.crops.points([hit for hit in hits if hit.id not in present], self._renew)
            destination.upsert(points)  # durable before the resume point moves past these faces
            self._unwrite_deleted(origin, destination, points)
            self._embedded += len(points)
            if skipped:
                self._skipped.update(skipped)
                self.records.update(self.tenant, skipped=max(self._skipped_before, len(self._skipped)))
            if next_offset is not None:
                self._offsets[source] = str(next_offset)
                self.records.update(self.tenant, offsets=self._offsets)
            self._throttle()
            now = time.monotonic()
            self._syncing_s += now - self._page_started
            self._page_started = now
            self._report(active, target)
            if next_offset is None:
                return
            offset = str(next_offset)

    def _unwrite_deleted(
        self, origin: VectorIndex, destination: VectorIndex, points: list[FacePoint]
    ) -> None:
        """Take back the faces whose image was deleted while this page was embedded.

        A deletion removes the points of every collection, then the crops, then the points once
        more (:mod:`facepipe.store.deletion`). Written after that last pass, a face would come
        back; but then its source point and its crop are already gone, which this check sees.
        (A face whose crop is there again was ingested anew: it stays.)"""
        if not points:
            return
        present = origin.existing_ids(point.id for point in points)
        for image in sorted({point.image_sha256 for point in points if point.id not in present}):
            faces = [point for point in points if point.image_sha256 == image]
            if not any(self.crops.exists(point) for point in faces):
                removed = destination.delete_image(self.tenant, image)
                log.info(
                    "tenant %s: image %s was deleted during the backfill: %d point(s) taken back",
                    self.tenant,
                    image,
                    removed,
                )

    def _report(self, active: str, target: str) -> None:
        rate = self._embedded / self._syncing_s if self._syncing_s > 0 else 0.0
        self.records.update(
            self.tenant,
            migrated=self.index.view(target).count(self.tenant),
            total=self.index.view(active).count(self.tenant),
            faces_per_s=round(rate, 2),
        )
        self.progress(self.records.load(self.tenant) or MigrationState(self.tenant))

    def _throttle(self) -> None:
        rate = self.options.max_faces_per_s
        if rate > 0:
            self._wait(self._embedded / rate - (self._syncing_s + time.monotonic() - self._page_started))

    def _wait(self, seconds: float) -> None:
        """Sleep, renewing the tenant lock so it outlives the wait."""
        deadline = time.monotonic() + max(0.0, seconds)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 5.0))
            self._renew()

    def _renew(self) -> None:
        if self._lock is not None:
            self._lock.renew()

    # --- the family's other collections ----------------------------------------------------

    def _holding_tenant(self) -> list[str]:
        return [name for name in self.index.family_collections() if self.index.view(name).count(self.tenant)]

    def _remove_tenant(self, name: str) -> None:
        """The tenant's points leave a collection; a collection left empty and unaliased is dropped."""
        view = self.index.view(name)
        removed = view.delete_tenant(self.tenant)
        if removed and view.count() == 0 and self.index.drop_collection(name):
            log.info("dropped collection %s: no tenant's faces left in it", name)
        log.info("tenant %s: %d points removed from %s", self.tenant, removed, name)

    def _sweep(self, state: MigrationState, route: Route, *, expired_only: bool) -> list[Retained]:
        """Remove the tenant from collections kept for rollback (those past their deadline)."""
        in_use = {route.collection, self.index.pack_collection(self.pack)}  # searched, or about to be
        keep, gone = [], []
        for kept in state.previous:
            if kept.collection in in_use or (expired_only and not kept.expired()):
                keep.append(kept)
                continue
            self._remove_tenant(kept.collection)
            gone.append(kept)
        if len(keep) != len(state.previous):
            self.records.update(self.tenant, previous=keep)
            state.previous = keep
        return gone

    def clean_up(self) -> list[Retained]:
        """Remove the tenant from every collection kept for rollback now (``facepipe reembed --cleanup``)."""
        with self.records.lock(self.tenant).held(self.options.lock_wait_s):
            state = self.records.load(self.tenant) or MigrationState(self.tenant)
            if state.running:
                raise RuntimeError(
                    f"tenant {self.tenant}: a migration to {state.target} is unfinished ({state.phase}); "
                    "finish or roll it back first"
                )
            return self._sweep(state, self.index.route(self.tenant), expired_only=False)


def _name(pack: ModelPack | None) -> str:
    return pack.name if pack is not None else ""


@contextlib.contextmanager
def opened(
    settings: Settings,
    *,
    index: VectorIndex | None = None,
    store: ObjectStore | None = None,
    redis_client: redis.Redis | None = None,
) -> Iterator[tuple[VectorIndex, ObjectStore, redis.Redis]]:
    """The vector index, S3 and Redis of ``settings``; what the caller passed is used and left open."""
    own_index = index is None
    own_redis = redis_client is None
    index = index if index is not None else VectorIndex(settings)
    try:
        client = redis_client if redis_client is not None else redis.Redis.from_url(settings.redis_url)
        try:
            yield index, store if store is not None else ObjectStore(settings), client
        finally:
            if own_redis:
                client.close()
    finally:
        if own_index:
            index.close()


def open_and_run(
    settings: Settings,
    tenant: str,
    pack: str,
    *,
    options: ReembedOptions | None = None,
    progress: Progress | None = None,
    embedder: FaceEmbedder | None = None,
    index: VectorIndex | None = None,
    store: ObjectStore | None = None,
    redis_client: redis.Redis | None = None,
) -> ReembedReport:
    """One :class:`Reembedder` run with the stores of ``settings`` (or the ones given)."""
    with opened(settings, index=index, store=store, redis_client=redis_client) as (vectors, objects, client):
        return Reembedder(
            settings,
            tenant,
            pack,
            index=vectors,
            store=objects,
            redis_client=client,
            options=options,
            embedder=embedder,
            progress=progress,
        ).run()
