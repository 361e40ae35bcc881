"""Click streams for load tests: real Amazon-M2 sessions replayed as users, or a generated stream.

Each Amazon-M2 session (``../shared/data/amazon-m2``) becomes one user whose clicks are the session's
product ids, in order. The data has no product text or vectors, so every product gets a generated
384-d unit vector: products clicked in one session mostly share a cluster, so a replayed user builds
a few coherent interests as a real one would. The catalog holds the sessions' products (sessions
are kept while their products fit in ``n_items``) and is filled up to ``n_items`` with generated
items that nobody clicked. When the folder is absent, the same shape of stream is generated:
sessions of 2–20 clicks, mostly inside one cluster, Zipf-popular items.

Events are laid on a timeline: each user starts at a random moment of the replayed span and clicks
every ~30 s of event time, so a batch of a few hundred events rarely holds two events of one user
(coalescing gets little help; the figures are not flattered by it).
"""

from __future__ import annotations

import csv
import hashlib
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

AMAZON_FILES = ("task2_sessions_dev.csv", "sessions_6locales_part1.csv", "sessions_6locales_part2.csv")
LOCALE_LANG = {"DE": "de", "JP": "ja", "UK": "en", "FR": "fr", "IT": "it", "ES": "es"}
LANGS = tuple(LOCALE_LANG.values())

#: Length of the noise added to a cluster centre (unit centre): item↔centre cosine ≈ 0.91, item↔item ≈ 0.83, so a
#: session's on-topic clicks mostly join one interest (XREC_INTEREST_THRESHOLD 0.75) and off-topic ones start another.
CLUSTER_NOISE = 0.45
#: Share of a session's new products that land in a random cluster instead of the session's.
OFF_CLUSTER = 0.2
#: Items per generated vector block; blocks are seeded separately so any slice is reproducible.
BLOCK = 65_536
#: Mean gap between two clicks of one user, in seconds of event time.
CLICK_GAP_S = 30.0
#: Events per second of event time the replayed span represents.
STREAM_RATE = 50.0


@dataclass(frozen=True)
class Session:
    """One shopping session: the products clicked, in order, and the shop's locale."""

    items: tuple[str, ...]
    lang: str


@dataclass
class Catalog:
    """Item ids, languages and clusters; vectors are generated on demand, block by block."""

    ids: list[str]
    langs: list[str]
    clusters: np.ndarray  # (n,) int32 cluster of each item
    n_clusters: int
    dim: int
    seed: int
    _centres: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def centres(self) -> np.ndarray:
        if self._centres is None:
            rng = np.random.default_rng([self.seed, 0xC3])
            c = rng.standard_normal((self.n_clusters, self.dim)).astype(np.float32)
            self._centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        return self._centres

    def vectors(self, start: int, stop: int) -> np.ndarray:
        """Unit float32 vectors of items ``start..stop`` (the same on every call)."""
        out = []
        for block in range(start // BLOCK, (max(stop, start + 1) - 1) // BLOCK + 1):
            lo, hi = block * BLOCK, min((block + 1) * BLOCK, len(self.ids))
            rng = np.random.default_rng([self.seed, block])
            noise = rng.standard_normal((hi - lo, self.dim)).astype(np.float32)
            noise *= CLUSTER_NOISE / math.sqrt(self.dim)
            v = self.centres[self.clusters[lo:hi]] + noise
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            out.append(v[max(start, lo) - lo : min(stop, hi) - lo])
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def item_records(self, start: int, stop: int, ts_ms: int) -> Iterator[dict[str, Any]]:
        """Items-topic records (with their precomputed vectors) of items ``start..stop``."""
        vecs = self.vectors(start, stop)
        for i, v in zip(range(start, stop), vecs, strict=True):
            yield {
                "item_id": self.ids[i],
                "title": f"product {self.ids[i]}",
                "lang": self.langs[i],
                "category": f"c{int(self.clusters[i])}",
                "available": True,
                "ts": ts_ms,
                "vector": v.tolist(),
            }


@dataclass
class Workload:
    """What a load test replays: the catalog and the events in stream order."""

    source: str
    catalog: Catalog
    events: list[dict[str, Any]]
    users: int
    sessions: int  # distinct real (or generated) sessions behind the stream
    session_repeats: float  # how many users replay each session on average (1.0: none repeated)


# --- sessions ------------------------------------------------------------------------------------


def load_amazon_sessions(data_dir: Path) -> list[Session]:
    """Every session of the Amazon-M2 files present (``next_item`` is appended: it is a real click)."""
    sessions: list[Session] = []
    for name in AMAZON_FILES:
        path = data_dir / name
        if not path.is_file():
            continue
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                items = row["prev_items"].split()
                if row.get("next_item"):
                    items.append(row["next_item"].strip())
                if items:
                    sessions.append(Session(tuple(items), LOCALE_LANG.get(row.get("locale", ""), "und")))
    return sessions


def generated_sessions(n_items: int, count: int, seed: int, n_clusters: int) -> list[Session]:
    """Sessions like Amazon-M2's (2–20 clicks, mostly one cluster, Zipf-popular items) over ``G<i>`` ids."""
    rng = np.random.default_rng([seed, 0x6E])
    per_cluster = max(1, n_items // n_clusters)
    ranks = np.arange(1, per_cluster + 1, dtype=np.float64)
    zipf = ranks**-1.1
    zipf /= zipf.sum()
    lengths = np.minimum(20, 2 + rng.geometric(0.4, size=count) - 1)
    out = []
    for n in lengths:
        cluster = int(rng.integers(n_clusters))
        lang = LANGS[cluster % len(LANGS)]
        picks = []
        for _ in range(int(n)):
            c = cluster if rng.random() >= OFF_CLUSTER else int(rng.integers(n_clusters))
            picks.append(f"G{min(n_items - 1, c + n_clusters * int(rng.choice(per_cluster, p=zipf)))}")
        out.append(Session(tuple(picks), lang))
    return out


def clusters_for(n_items: int) -> int:
    return max(8, n_items // 500)


# --- workload ------------------------------------------------------------------------------------


def build_workload(
    n_items: int,
    n_users: int,
    n_events: int,
    *,
    dim: int = 384,
    seed: int = 0,
    data_dir: Path | None = None,
    now_ms: int | None = None,
) -> Workload:
    """The catalog and a stream of ``n_events`` clicks by ``n_users`` users, real sessions when present."""
    if n_items < 1 or n_users < 1 or n_events < 1:
        raise ValueError("items, users and events must be at least 1")
    n_clusters = clusters_for(n_items)
    sessions = load_amazon_sessions(data_dir) if data_dir is not None and data_dir.is_dir() else []
    if sessions:
        source = f"amazon-m2 sessions ({data_dir})"
        random.Random(seed).shuffle(sessions)
        pool, products = _fit_sessions(sessions, n_items, n_users, n_events)
        if not pool:
            raise ValueError(f"no Amazon-M2 session fits a catalog of {n_items} items")
    else:
        source = "generated sessions (amazon-m2 data not found)"
        pool = generated_sessions(n_items, max(n_users, n_events // 3 + 1), seed, n_clusters)
        products = {}
    catalog = _catalog(pool, products, n_items, n_clusters, dim, seed, generated=not sessions)
    users = _assign(pool, n_users, n_events)
    events = _timeline(users, n_events, seed, now_ms if now_ms is not None else int(time.time() * 1000))
    distinct = len({id(s) for seqs in users for s in seqs})
    used = sum(len(seqs) for seqs in users)
    return Workload(
        source=source,
        catalog=catalog,
        events=events,
        users=len({e["user_id"] for e in events}),
        sessions=distinct,
        session_repeats=used / max(1, distinct),
    )


def _fit_sessions(
    sessions: list[Session], n_items: int, n_users: int, n_events: int
) -> tuple[list[Session], dict[str, str]]:
    """Sessions whose products fit in the catalog, enough for the users and events asked for."""
    products: dict[str, str] = {}  # product id -> language (locale of the first session that clicked it)
    pool: list[Session] = []
    clicks = 0
    for s in sessions:
        new = [p for p in dict.fromkeys(s.items) if p not in products]
        if len(products) + len(new) > n_items:
            continue
        for p in new:
            products[p] = s.lang
        pool.append(s)
        clicks += len(s.items)
        if len(pool) >= n_users and clicks >= n_events:
            break
    return pool, products


def _catalog(
    pool: list[Session],
    products: dict[str, str],
    n_items: int,
    n_clusters: int,
    dim: int,
    seed: int,
    *,
    generated: bool,
) -> Catalog:
    rng = random.Random(seed + 1)
    if generated:
        ids = [f"G{i}" for i in range(n_items)]
        clusters = [i % n_clusters for i in range(n_items)]
        langs = [LANGS[c % len(LANGS)] for c in clusters]
        return Catalog(ids, langs, np.asarray(clusters, np.int32), n_clusters, dim, seed)
    cluster_of: dict[str, int] = {}
    for s in pool:  # a session's products share the cluster of the first one already placed
        known = next((cluster_of[p] for p in s.items if p in cluster_of), None)
        home = known if known is not None else rng.randrange(n_clusters)
        for p in s.items:
            if p not in cluster_of:
                cluster_of[p] = home if rng.random() >= OFF_CLUSTER else rng.randrange(n_clusters)
    ids = list(products)
    langs = [products[p] for p in ids]
    clusters = [cluster_of[p] for p in ids]
    for i in range(n_items - len(ids)):  # fillers: in the catalog, never clicked
        ids.append(f"F{i}")
        c = rng.randrange(n_clusters)
        clusters.append(c)
        langs.append(LANGS[c % len(LANGS)])
    return Catalog(ids, langs, np.asarray(clusters, np.int32), n_clusters, dim, seed)


def _assign(pool: list[Session], n_users: int, n_events: int) -> list[list[Session]]:
    """User u replays sessions u, u+U, u+2U… of the pool (cycling) until the users hold enough clicks."""
    users: list[list[Session]] = [[] for _ in range(n_users)]
    clicks = 0
    j = 0
    while clicks < n_events or j < n_users:
        s = pool[j % len(pool)]
        users[j % n_users].append(s)
        clicks += len(s.items)
        j += 1
    return [u for u in users if u]


def _timeline(users: list[list[Session]], n_events: int, seed: int, now_ms: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng([seed, 0x71])
    span_s = max(60.0, n_events / STREAM_RATE)
    base_ms = now_ms - int(span_s * 1000) - 3_600_000  # all in the past: no clamping of future times
    times: list[float] = []
    owners: list[int] = []
    items: list[str] = []
    for u, seqs in enumerate(users):
        clicks = [p for s in seqs for p in s.items]
        t = float(rng.uniform(0, span_s))
        gaps = rng.exponential(CLICK_GAP_S, size=len(clicks))
        for p, gap in zip(clicks, gaps, strict=True):
            times.append(t)
            owners.append(u)
            items.append(p)
            t += float(gap)
    order = np.argsort(np.asarray(times), kind="stable")[:n_events]
    return [
        {
            "event_id": f"e{n}",
            "user_id": f"U{owners[i]}",
            "item_id": items[i],
            "type": "click",
            "ts": base_ms + int(times[i] * 1000),
        }
        for n, i in enumerate(order.tolist())
    ]


def stable_fraction(key: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``key``: picks which events of a mix become reviews, reproducibly."""
    digest = hashlib.blake2b((salt + key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64
