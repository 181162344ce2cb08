"""Names in a collection family: one collection per model pack, one alias per tenant.

``QDRANT_COLLECTION`` names the family (``base``, default ``faces_v1``):

- ``<base>_<pack>_v<version>`` holds the vectors of one model pack
  (``faces_v1_buffalo_sc_v1``, ``faces_v1_opencv_yunet_sface_v1``): vectors of different
  packs are not comparable, so they never share a collection;
- ``<base>@<tenant>`` is the tenant's alias: the collection its searches use (a Qdrant
  alias on a server, a recorded pointer in the embedded store);
- ``<base>`` itself is where every tenant's vectors were before collections were per pack;
  a tenant without an alias still reads it (nothing needs converting on an upgrade).

A tenant id never contains ``@`` (facepipe.core.tenancy), so an alias never collides with
another tenant's or with a collection name.
"""

from __future__ import annotations

from collections.abc import Iterable

from facepipe.core.packs import PACKS, ModelPack

ALIAS_SEPARATOR = "@"


def pack_collection(base: str, pack: ModelPack) -> str:
    """The collection of one pack's vectors."""
    return f"{base}_{pack.name}_v{pack.version}"


def tenant_alias(base: str, tenant: str) -> str:
    """The name that resolves to the collection a tenant searches."""
    return f"{base}{ALIAS_SEPARATOR}{tenant}"


def alias_tenant(base: str, alias: str) -> str | None:
    """The tenant of one of this family's aliases, None for any other name."""
    prefix = f"{base}{ALIAS_SEPARATOR}"
    return alias[len(prefix) :] if alias.startswith(prefix) and len(alias) > len(prefix) else None


def pack_of_name(base: str, name: str) -> ModelPack | None:
    """The pack whose collection ``name`` is, None when it is not a pack collection of ``base``."""
    for pack in PACKS.values():
        if name == pack_collection(base, pack):
            return pack
    return None


def family(base: str, names: Iterable[str]) -> list[str]:
    """The collections of the family among ``names``: the base one and every pack collection."""
    return sorted(name for name in names if name == base or pack_of_name(base, name) is not None)
