"""The ops-api's routes, one ``APIRouter`` per concern, in the order the app includes them
(the order of /openapi.json and of /docs)."""

from __future__ import annotations

from fastapi import APIRouter

from facepipe.ops_api.routes import deletion, dlq, health, local, search

ROUTERS: tuple[APIRouter, ...] = (health.router, search.router, dlq.router, deletion.router, local.router)
