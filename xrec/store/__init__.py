"""Vector stores: the ``VectorStore`` protocol and its two backends, chosen by ``XREC_STORE_BACKEND``.

``edge`` (``EdgeStore``) embeds Qdrant Edge in the process; ``qdrant`` (``QdrantServerStore``) talks to
a Qdrant server. Backends are imported on first use: qdrant-client is slow to import and a worker
needs only one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xrec.store.base import (
    INDEXED_PAYLOAD_FIELDS,
    Hit,
    HitColumns,
    ItemFilter,
    ItemPoint,
    StoredItem,
    StoreError,
    VectorQuery,
    VectorStore,
    point_id,
)

if TYPE_CHECKING:
    from xrec.config import Settings
    from xrec.store.edge import EdgeStore
    from xrec.store.qdrant import QdrantServerStore

__all__ = [
    "INDEXED_PAYLOAD_FIELDS",
    "EdgeStore",
    "Hit",
    "HitColumns",
    "ItemFilter",
    "ItemPoint",
    "QdrantServerStore",
    "StoreError",
    "StoredItem",
    "VectorQuery",
    "VectorStore",
    "open_store",
    "point_id",
]


def open_store(settings: Settings, dim: int | None = None) -> VectorStore:
    """The configured backend, not yet opened: it opens on first use.

    With ``dim`` the first call creates the collection (or checks that the existing one holds
    ``dim``-d cosine vectors); without it, the collection must already exist. Calling
    ``await store.ensure_collection(dim)`` up front surfaces those errors at start-up instead.
    """
    if settings.store_backend == "edge":
        from xrec.store.edge import EdgeStore

        return EdgeStore(
            settings.store_dir / settings.collection,
            dim=dim,
            index_threshold=settings.store_index_threshold,
            batch_exact=settings.store_batch_exact,
        )
    if settings.store_backend == "qdrant":
        from xrec.store.qdrant import QdrantServerStore

        return QdrantServerStore.from_settings(settings, dim=dim)
    raise StoreError(f"unknown store backend {settings.store_backend!r} (expected edge or qdrant)")


def __getattr__(name: str) -> Any:
    if name == "EdgeStore":
        from xrec.store.edge import EdgeStore

        return EdgeStore
    if name == "QdrantServerStore":
        from xrec.store.qdrant import QdrantServerStore

        return QdrantServerStore
    raise AttributeError(name)
