"""What the bench feeds a worker: the catalog as store points, events as records, held profiles, review texts."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from xrec.bench.sessions import Catalog, stable_fraction
from xrec.bench.texts import mind_news, sample_sentences


def hash_index(key: str, n: int) -> int:
    return int(stable_fraction(key, "text") * n)


def review_texts(seed: int, mind_dir: Path) -> list[str]:
    """Review-length texts in several languages: MIND titles/abstracts when present, else the project's sample."""
    out = [f"{title}. {abstract}".strip(". ") for title, abstract in mind_news(mind_dir, per_file=2000)]
    if not out:
        sentences = sample_sentences()
        rng = random.Random(seed)
        out = [" ".join(rng.choice(sentences) for _ in range(rng.choice((1, 2, 3)))) for _ in range(500)]
    return out


def catalog_points(catalog: Catalog, start: int, stop: int, ts: int) -> list[Any]:
    """Items ``start``..``stop`` of the catalog as store points, with the payload an indexer writes."""
    from xrec.store.base import ItemPoint

    vecs = catalog.vectors(start, stop)
    return [
        ItemPoint(
            catalog.ids[i],
            vecs[i - start],
            {
                "item_id": catalog.ids[i],
                "title": f"product {catalog.ids[i]}",
                "lang": catalog.langs[i],
                "category": f"c{int(catalog.clusters[i])}",
                "tags": [],
                "available": True,
                "ts": ts,
            },
        )
        for i in range(start, stop)
    ]


def synthetic_profiles(catalog: Catalog, count: int, seed: int) -> Iterator[tuple[str, bytes]]:
    """Profiles like a replayed user's after a few sessions: 1–4 interests, 20 seen items, 20 event ids."""
    from collections import OrderedDict

    from xrec.profile import UserProfile

    rng = np.random.default_rng([seed, 0x5E])
    now = int(time.time() * 1000)
    centres = catalog.centres
    n_items = len(catalog)
    chunk = 10_000
    for base in range(0, count, chunk):
        m = min(chunk, count - base)
        ks = rng.integers(1, 5, size=m)
        clusters = rng.integers(0, catalog.n_clusters, size=(m, 4))
        noise = rng.standard_normal((m, 4, catalog.dim)).astype(np.float32) * (0.3 / math.sqrt(catalog.dim))
        cents = centres[clusters] + noise
        cents /= np.linalg.norm(cents, axis=2, keepdims=True)
        seen = rng.integers(0, n_items, size=(m, 20))
        fps = rng.bytes(m * 20 * 8)
        weights = rng.uniform(0.5, 3.0, size=(m, 4))
        for j in range(m):
            k = int(ks[j])
            ids = [catalog.ids[i] for i in seen[j]]
            p = UserProfile(
                dim=catalog.dim,
                centroids=cents[j, :k].copy(),
                weights=weights[j, :k].copy(),
                anchors=ids[:k],
                seen=OrderedDict.fromkeys(ids),
                languages={catalog.langs[int(seen[j][0])]: 1.0},
                event_ids=OrderedDict.fromkeys(fps[(j * 20 + i) * 8 : (j * 20 + i + 1) * 8] for i in range(20)),
                last_ts=now - 3_600_000,
                events=20,
                neutral=False,  # built from raw vectors: the worker moves them into its neutral space on load
            )
            yield f"U{base + j}", p.to_bytes()
