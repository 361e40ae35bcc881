"""xrec: an event-driven streaming recommender for multilingual catalogs.

The library (this package) knows nothing of Faust; ``streams`` wires it to Kafka. What an embedding
program needs is importable from here::

    from xrec import Recommender, Settings, TextEncoder, open_store, Interaction

The engine, encoder and store pull in torch and Qdrant, so they load on first use: ``import xrec``
stays cheap for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from xrec.config import Settings, SettingsError
from xrec.errors import CommandError, XrecError

__version__ = "0.1.0"

#: Public names that load their module on first use, and where each lives.
_LAZY = {
    "Recommender": "xrec.pipeline",
    "EventBatchResult": "xrec.pipeline",
    "ItemBatchResult": "xrec.pipeline",
    "TextEncoder": "xrec.encoder",
    "DeviceUnavailableError": "xrec.encoder",
    "BackendUnavailableError": "xrec.openvino_encoder",
    "ModelUnavailableError": "xrec.modelhub",
    "open_store": "xrec.store",
    "VectorStore": "xrec.store.base",
    "StoreError": "xrec.store.base",
    "ItemUpsert": "xrec.events",
    "ItemDelete": "xrec.events",
    "Interaction": "xrec.events",
    "Impression": "xrec.events",
    "ForgetUser": "xrec.events",
    "RecommendationList": "xrec.events",
    "RecommendedItem": "xrec.events",
    "RecordError": "xrec.events",
    "parse_item": "xrec.events",
    "parse_event": "xrec.events",
    "UserProfile": "xrec.profile",
    "ProfileParams": "xrec.profile",
    "RankParams": "xrec.ranking",
}

__all__ = [
    "BackendUnavailableError",
    "CommandError",
    "DeviceUnavailableError",
    "EventBatchResult",
    "ForgetUser",
    "Impression",
    "Interaction",
    "ItemBatchResult",
    "ItemDelete",
    "ItemUpsert",
    "ModelUnavailableError",
    "ProfileParams",
    "RankParams",
    "RecommendationList",
    "RecommendedItem",
    "Recommender",
    "RecordError",
    "Settings",
    "SettingsError",
    "StoreError",
    "TextEncoder",
    "UserProfile",
    "VectorStore",
    "XrecError",
    "__version__",
    "open_store",
    "parse_event",
    "parse_item",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xrec' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from xrec.encoder import DeviceUnavailableError, TextEncoder
    from xrec.events import (
        ForgetUser,
        Impression,
        Interaction,
        ItemDelete,
        ItemUpsert,
        RecommendationList,
        RecommendedItem,
        RecordError,
        parse_event,
        parse_item,
    )
    from xrec.modelhub import ModelUnavailableError
    from xrec.openvino_encoder import BackendUnavailableError
    from xrec.pipeline import EventBatchResult, ItemBatchResult, Recommender
    from xrec.profile import ProfileParams, UserProfile
    from xrec.ranking import RankParams
    from xrec.store import open_store
    from xrec.store.base import StoreError, VectorStore
