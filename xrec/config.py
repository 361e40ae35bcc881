"""One Settings object, read from ``XREC_*`` environment variables (twelve-factor).

Every knob of xrec lives here, with its environment name, default and meaning in one place, so the
README's configuration table is generated from this file (``xrec config --markdown``) and a test
keeps the two in step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from xrec.errors import XrecError

ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
StoreBackend = Literal["edge", "qdrant"]
EncoderBackend = Literal["auto", "torch", "openvino"]
OpenVinoPrecision = Literal["auto", "bfloat16", "float32"]
KafkaCompression = Literal["none", "gzip", "snappy", "lz4", "zstd"]
LanguagePolicy = Literal["any", "prefer", "only"]
Ranker = Literal["fixed", "learned"]
RankerLearning = Literal["on", "frozen"]
VectorSpace = Literal["language", "catalog", "raw"]
LanguageDetection = Literal["off", "missing", "correct"]
TableStore = Literal["memory", "rocksdb"]

DEFAULT_EVENT_WEIGHTS = "view=0.3,click=1.0,like=1.5,add_to_cart=2.0,purchase=3.0,review=1.5,dislike=-1.5,skip=-0.3"
SECRET_FIELDS = frozenset({"kafka_sasl_password", "qdrant_api_key", "kafka_ssl_key_password"})


class SettingsError(XrecError, ValueError):
    """A ``XREC_*`` variable holds a value that cannot be used; the message names the variable."""

    exit_code = 2


def _setting(default: Any, doc: str, env: str | None = None) -> Any:
    return field(default=default, metadata={"doc": doc, "env": env})


def default_home() -> Path:
    """Where caches (Kafka jars, the model, broker and store data) live unless ``XREC_HOME`` says."""
    return Path(os.environ.get("XREC_HOME") or Path.home() / ".cache" / "xrec")


@dataclass(frozen=True)
class Settings:
    """Everything a worker, the CLI and the benchmarks need to know, immutable once read."""

    # --- paths -------------------------------------------------------------------------------
    home: str = _setting(
        "", "Cache root: Kafka jars, prepared model, local broker and store data (default ~/.cache/xrec)."
    )

    data_dir: str = _setting(
        "",
        "Folder of the evaluation and benchmark data (mind-xmind/, masakhanews/, tatoeba/, amazon-m2/); "
        "default: ../shared/data beside the xrec checkout. Commands also take --data-dir.",
    )

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap: str = _setting(
        "", "Bootstrap servers of an existing Kafka cluster. Empty: the CLI starts and uses the local broker."
    )
    broker_port: int = _setting(9092, "Port of the local broker that `xrec broker start` and the demo run.")
    kafka_version: str = _setting(
        "3.9.2",
        "Apache Kafka release of the local broker (`xrec broker start`, the demo, the tests): 3.9.x or 4.x, "
        "fetched from Maven Central once per version.",
    )
    app_id: str = _setting("xrec", "Faust application id: consumer group and prefix of changelog topics.")
    kafka_security_protocol: str = _setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: str = _setting("", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 when SASL is used.")
    kafka_sasl_username: str = _setting("", "SASL user name.")
    kafka_sasl_password: str = _setting("", "SASL password (never logged).")
    kafka_ssl_cafile: str = _setting("", "CA bundle that signs the brokers' certificates.")
    kafka_ssl_certfile: str = _setting("", "Client certificate (mutual TLS).")
    kafka_ssl_keyfile: str = _setting("", "Client private key (mutual TLS).")
    kafka_ssl_key_password: str = _setting("", "Password of the client private key (never logged).")
    kafka_compression: KafkaCompression = _setting(
        "none",
        "Compression of the records xrec writes (lists, dead letters, statistics, changelogs): none, gzip, snappy, "
        "lz4 or zstd (none: no gain measured on one machine, BENCHMARKS.md). Every codec is always read.",
    )
    processing_guarantee: ProcessingGuarantee = _setting(
        "at_least_once", "at_least_once (with event_id dedup) or exactly_once (Kafka transactions)."
    )
    table_store: TableStore = _setting(
        "memory",
        "Where a worker keeps its profile table: memory (restored from the changelog at every start) or rocksdb "
        "(on disk under XREC_STATE_DIR; a restarted worker reads only the changelog written since it stopped).",
    )
    state_dir: str = _setting(
        "",
        "The worker's local state: Faust's data directory, with the rocksdb profile tables (default "
        "$XREC_HOME/faust/<XREC_APP_ID>). Give each worker process on one host its own, and keep it across restarts.",
    )
    consumer_max_failures: int = _setting(
        5,
        "Failures in a row of a consumer loop (item indexer, event batch loop) after which the worker exits "
        "non-zero; each failure is logged at ERROR, counted and retried after a growing pause (1 s, 2 s, 4 s …).",
    )
    session_timeout_s: float = _setting(
        30.0,
        "A worker silent this long (crashed, killed) loses its partitions to the others: recovery time after a kill.",
    )

    # --- topics ------------------------------------------------------------------------------
    topic_items: str = _setting("xrec.items", "Item upserts and deletes, keyed by item_id.")
    topic_events: str = _setting("xrec.events", "Interaction events, keyed by user_id.")
    topic_control: str = _setting("xrec.control", "Control commands such as forget_user.")
    topic_recommendations: str = _setting("xrec.recommendations", "Output lists, keyed by user_id, compacted.")
    topic_dlq: str = _setting("xrec.dlq", "Records that could not be processed, with the reason.")
    topic_language_stats: str = _setting(
        "xrec.language-stats",
        "Per-language item counts and vector sums the neutral space is built from, per store and items partition "
        "(compacted; shared by the workers of one store, read back after a restart).",
    )
    topic_ranker: str = _setting(
        "xrec.ranker",
        "What each worker's learned ranker has learned, shared by all workers of an app (compacted; used only "
        "when a variant has ranker=learned).",
    )
    topic_click_through: str = _setting(
        "xrec.click-through",
        "Each worker's click-through counts (impressions and clicks per item, language and overall), shared by "
        "all workers of an app and kept through restarts (compacted).",
    )
    partitions: int = _setting(4, "Partitions of the events, recommendations and control topics (the unit of scaling).")
    item_partitions: int = _setting(1, "Partitions of the items topic.")

    # --- encoder -----------------------------------------------------------------------------
    model: str = _setting(
        "intfloat/multilingual-e5-small", "Hugging Face hub id or local directory of the text encoder."
    )
    device: str = _setting("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")
    max_tokens: int = _setting(256, "Texts are truncated to this many tokens before encoding.")
    token_budget: int = _setting(
        0,
        "Tokens (padded) per forward pass, bounding the encoder's memory (0: 8192 on a GPU, 2048 on OpenVINO, "
        "1024 for PyTorch on CPU, where smaller passes stay in cache: `xrec bench encoder`).",
    )
    encoder_backend: EncoderBackend = _setting(
        "auto",
        "auto (OpenVINO on CPU, 3.3–3.5× PyTorch's texts/s where the CPU has bf16 units; PyTorch on a GPU), "
        "torch or openvino (CPU only; converted from the same checkpoint, once, by `xrec model prepare`).",
    )
    openvino_precision: OpenVinoPrecision = _setting(
        "auto",
        "OpenVINO's compute precision: auto (bfloat16 where the CPU has bf16 units, else float32), bfloat16 or float32.",
    )
    openvino_model: str = _setting(
        "",
        "Directory of an OpenVINO export of XREC_MODEL made by `xrec model prepare` (default: found, or made once, "
        "under $XREC_HOME/models/openvino); refused if it was made from another checkpoint.",
    )
    encoder_threads: int = _setting(
        0, "CPU threads the encoder uses on CPU, either backend (0: the cores this process may use)."
    )
    encode_items: bool = _setting(
        True,
        "This worker encodes item texts for the workers of its vector space (one consumer group: each text is encoded "
        "once in all); false leaves it to the others (a worker without a GPU serves from vectors a GPU worker encoded).",
    )
    hub_timeout_s: float = _setting(10.0, "How long to wait for the Hugging Face hub before saying it is unreachable.")
    expect_gpu: bool = _setting(
        False,
        "This worker should encode on a GPU: exported as xrec_encoder_gpu_expected so an alert fires if it runs on CPU.",
    )

    # --- vector store ------------------------------------------------------------------------
    store_backend: StoreBackend = _setting("edge", "edge (embedded Qdrant Edge) or qdrant (Qdrant server).")
    store_path: str = _setting("", "Data directory of the edge store (default $XREC_HOME/store).")
    qdrant_url: str = _setting("http://localhost:6333", "Qdrant server URL for the qdrant backend.")
    qdrant_api_key: str = _setting("", "Qdrant API key (never logged).")
    qdrant_prefer_grpc: bool = _setting(True, "Use gRPC to talk to the Qdrant server.")
    qdrant_grpc_port: int = _setting(
        6334, "gRPC port of the Qdrant server (its host is the URL's); used while XREC_QDRANT_PREFER_GRPC is on."
    )
    qdrant_bin: str = _setting(
        "",
        "Qdrant server binary that the test suite starts (xrec.store.local_server) for the qdrant backend's "
        "tests; default: ../shared/bin/qdrant beside the xrec checkout.",
    )
    collection: str = _setting("xrec_items", "Name of the item collection.")
    store_index_threshold: int = _setting(
        20_000,
        "Edge store: below this many items search stays exact; `optimize()` builds the HNSW index only above it.",
    )
    store_batch_exact: bool = _setting(
        True,
        "Edge store below the index threshold: answer a query batch with one matrix product over an in-memory "
        "copy of the vectors (false: Qdrant Edge scans the collection once per query).",
    )

    # --- worker ------------------------------------------------------------------------------
    web_host: str = _setting("127.0.0.1", "Address the worker's HTTP server (views and /metrics) binds to.")
    web_port: int = _setting(6066, "Port of the worker's HTTP server (views and /metrics).")
    batch_size: int = _setting(
        256, "Item records the indexer takes at most per batch (their texts are encoded together)."
    )
    event_batch_size: int = _setting(
        2048,
        "Events one batch of the event loop takes at most. A batch is what has arrived (events never wait for more), "
        "so it only fills up while the worker is behind; then each user's events in it get one list (a backlog is "
        "coalesced).",
    )
    batch_within_ms: float = _setting(
        50.0,
        "How long the item indexer waits for more item records to encode together (events never wait: a batch "
        "of events is what has arrived).",
    )
    dedup_window: int = _setting(
        512, "Event ids remembered per user (8 bytes each, in the profile) to drop redeliveries."
    )
    item_cache_size: int = _setting(100_000, "Item vectors kept in the worker's LRU cache.")
    unknown_item_wait_s: float = _setting(
        30.0, "How long an event for a not-yet-known item waits before going to the DLQ."
    )
    max_record_bytes: int = _setting(1_000_000, "Records larger than this go to the DLQ.")
    max_text_chars: int = _setting(20_000, "Longer titles, bodies and review texts go to the DLQ.")
    max_tags: int = _setting(64, "Items with more tags go to the DLQ.")
    max_impression_items: int = _setting(100, "Impression events showing more items go to the DLQ.")

    # --- user model --------------------------------------------------------------------------
    interests_k: int = _setting(6, "Interest centroids kept per user.")
    interest_threshold: float = _setting(
        0.1,
        "Cosine (in the neutral space) above which an event joins an existing interest instead of starting one.",
    )
    half_life_hours: float = _setting(
        336.0, "Half-life of interest weights, in event time (two weeks: chosen on MIND, see EVALUATION.md)."
    )
    seen_max: int = _setting(500, "Recently seen items remembered per user (never recommended again).")
    event_weights: str = _setting(
        DEFAULT_EVENT_WEIGHTS, "Weight of each event type; negative types push interests away."
    )
    review_text_weight: float = _setting(
        0.5, "Share of the encoded review text in a review's vector (the rest is the item's)."
    )

    # --- ranking -----------------------------------------------------------------------------
    list_length: int = _setting(10, "Items in each published list.")
    candidates_per_interest: int = _setting(50, "Candidates fetched from the store per interest centroid.")
    interest_temperature: float = _setting(
        0.0,
        "How sharply a candidate is scored by its best-matching interest (0: the importance-weighted mean of "
        "interests, which scored best on the dev data; each interest still queries the store on its own).",
    )
    language_policy: LanguagePolicy = _setting(
        "any", "any, prefer (boost the user's languages) or only (filter to them)."
    )
    language_weight: float = _setting(0.05, "Score bonus for the user's language affinity.")
    negative_weight: float = _setting(0.5, "Weight of similarity to the user's dislikes.")
    freshness_weight: float = _setting(0.0, "Score bonus for recent items.")
    freshness_half_life_hours: float = _setting(48.0, "Half-life of the freshness bonus.")
    trending_weight: float = _setting(
        0.05, "Score bonus for items clicked a lot recently (decayed clicks relative to the most clicked item)."
    )
    ctr_weight: float = _setting(
        0.05,
        "Weight of an item's real-time click-through lift, log(item rate / its language's rate), learned from "
        "impression events (0: off; no impressions: no effect).",
    )
    ctr_half_life_hours: float = _setting(
        168.0, "Half-life of the impressions and clicks behind click-through rates (a week: chosen on MIND)."
    )
    ctr_prior_impressions: float = _setting(
        20.0, "Impressions' worth of the language's rate every item's click-through rate starts from."
    )
    fatigue_weight: float = _setting(
        0.02,
        "Score taken off per doubling of the times an item was shown to a user who never took it "
        "(log2(1 + times shown); from impression events).",
    )
    ranker: Ranker = _setting(
        "fixed",
        "fixed: score with the weights above; learned: start from them and learn them online from impression "
        "events and the clicks that follow (xrec/ranker.py).",
    )
    ranker_learning: RankerLearning = _setting(
        "on", "on: the learned ranker keeps learning; frozen: it ranks with what it has learned, learning no more."
    )
    ranker_learning_rate: float = _setting(
        0.001,
        "Step size of the learned ranker's pairwise updates (on margins scaled to their running RMS; chosen on MIND).",
    )
    ranker_l2: float = _setting(0.01, "Pull of the learned weights back toward the hand-set ones, per update.")
    ranker_generation: int = _setting(
        0,
        "The learned ranker uses only weights learned in this generation: raise it to reset what was learned "
        "(every worker starts again from the hand-set weights).",
    )
    mmr_lambda: float = _setting(
        1.0,
        "MMR trade-off: 1 is pure relevance, lower adds diversity (every value below 1 cost on-topic precision on the "
        "dev catalogs: EVALUATION.md, trade-off table).",
    )
    query_expansion: int = _setting(
        20,
        "Best answers of each interest's store query whose mean is blended into the interest before candidates "
        "are scored (query expansion; 0: off).",
    )
    vector_space: VectorSpace = _setting(
        "language",
        "How vectors are compared: language (each item minus its language's mean item vector, so a reader of one "
        "language gets the best items of every language), catalog (minus the catalog's mean only) or raw (as encoded).",
    )
    language_detection: LanguageDetection = _setting(
        "correct",
        "Items and reviews without a lang get one identified from their text; correct: also replace a lang the "
        "identifier confidently contradicts; off: keep what producers send.",
    )

    # --- experiments -------------------------------------------------------------------------
    variants: str = _setting(
        "",
        "A/B variants: 'name=share overrides' separated by ';', e.g. 'A=50; B=50 ctr_weight=0'. Each user is in one "
        "variant by a stable hash of their id; overrides are ranking settings (lower-case names, see VARIANT_SETTINGS). "
        "Empty: everyone in variant A.",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            hint = _HINTS[f.name]
            allowed = get_args(hint)
            if allowed and getattr(self, f.name) not in allowed:
                raise SettingsError(
                    f"{env_name(f.name)}={getattr(self, f.name)!r}: expected one of {', '.join(allowed)}"
                )
        if self.interests_k < 1:
            raise SettingsError("XREC_INTERESTS_K must be at least 1")
        for name in ("broker_port", "web_port", "qdrant_grpc_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise SettingsError(f"{env_name(name)}={getattr(self, name)} is not a TCP port (0–65535)")
        if not re.fullmatch(r"[34]\.\d+\.\d+", self.kafka_version):
            raise SettingsError(f"XREC_KAFKA_VERSION={self.kafka_version!r}: expected a 3.x.y or 4.x.y Kafka release")
        if self.table_store == "rocksdb" and self.processing_guarantee == "exactly_once":
            raise SettingsError(
                "XREC_TABLE_STORE=rocksdb is not offered with XREC_PROCESSING_GUARANTEE=exactly_once: a transaction "
                "aborted after its profile writes reached the local database would leave them there without their "
                "changelog records"
            )
        if self.consumer_max_failures < 1:
            raise SettingsError("XREC_CONSUMER_MAX_FAILURES must be at least 1")
        if self.variants.strip():  # each variant's settings must be valid settings
            for spec in parse_variants(self.variants):
                dataclasses.replace(self, variants="", **dict(spec.overrides))
        if self.max_impression_items < 1:
            raise SettingsError("XREC_MAX_IMPRESSION_ITEMS must be at least 1")
        if self.ctr_half_life_hours <= 0 or self.ctr_prior_impressions <= 0:
            raise SettingsError("XREC_CTR_HALF_LIFE_HOURS and XREC_CTR_PRIOR_IMPRESSIONS must be positive")
        if self.token_budget < 0:
            raise SettingsError("XREC_TOKEN_BUDGET must be 0 (automatic) or a positive number of tokens")
        for name in ("partitions", "item_partitions"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{env_name(name)} must be at least 1")
        parse_event_weights(self.event_weights)

    # --- derived -----------------------------------------------------------------------------
    @property
    def home_path(self) -> Path:
        return Path(self.home) if self.home else default_home()

    def qdrant_binary(self) -> Path:
        """The Qdrant server binary to start locally: ``XREC_QDRANT_BIN``, else ``../shared/bin/qdrant``."""
        if self.qdrant_bin:
            return Path(self.qdrant_bin)
        return Path(__file__).resolve().parents[2] / "shared" / "bin" / "qdrant"

    def shared_data(self, name: str) -> Path:
        """A data set's folder: under ``XREC_DATA_DIR``, else ``../shared/data`` beside the checkout that
        holds this package (what a fresh clone next to the project's data has); never the working directory."""
        if self.data_dir:
            return Path(self.data_dir) / name
        return Path(__file__).resolve().parents[2] / "shared" / "data" / name

    @property
    def worker_state_dir(self) -> Path:
        """Where a worker keeps its local state (Faust's data directory): ``XREC_STATE_DIR``, else one per app id."""
        return Path(self.state_dir) if self.state_dir else self.home_path / "faust" / self.app_id

    @property
    def store_dir(self) -> Path:
        return Path(self.store_path) if self.store_path else self.home_path / "store"

    @property
    def weights(self) -> dict[str, float]:
        return parse_event_weights(self.event_weights)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``XREC_*`` variable; ``overrides`` win (handy for CLI flags and tests)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(env_name(f.name))
            if raw is not None and raw != "":
                values[f.name] = _coerce(f.name, _HINTS[f.name], raw)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        """The dataclass repr would print passwords; an f-string or log line must not."""
        body = ", ".join(f"{k}={v!r}" for k, v in self.redacted().items())
        return f"Settings({body})"

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict with secrets masked: the only form that may be logged."""
        out = dataclasses.asdict(self)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = "***"
        return out


_HINTS = get_type_hints(Settings)


def env_name(field_name: str) -> str:
    f = {f.name: f for f in fields(Settings)}[field_name]
    return f.metadata.get("env") or "XREC_" + field_name.upper()


def _coerce(name: str, hint: Any, raw: str) -> Any:
    try:
        if hint is bool:
            low = raw.strip().lower()
            if low in {"1", "true", "yes", "on"}:
                return True
            if low in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
    except ValueError:
        raise SettingsError(f"{env_name(name)}={raw!r} is not a valid {getattr(hint, '__name__', hint)}") from None
    return raw


EventType = Literal["view", "click", "like", "add_to_cart", "purchase", "review", "dislike", "skip"]
EVENT_TYPES: tuple[EventType, ...] = get_args(EventType)  # the one list of event types (wire and weights)


#: Ranking settings an A/B variant may override. The user model (interests, decay) is not among them:
#: a user has one profile, built one way, whichever variant ranks their lists.
VARIANT_SETTINGS = (
    "list_length",
    "candidates_per_interest",
    "interest_temperature",
    "negative_weight",
    "language_policy",
    "language_weight",
    "freshness_weight",
    "freshness_half_life_hours",
    "trending_weight",
    "ctr_weight",
    "fatigue_weight",
    "mmr_lambda",
    "query_expansion",
    "ranker",
)
DEFAULT_VARIANT = "A"
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass(frozen=True)
class VariantSpec:
    """One A/B variant as ``XREC_VARIANTS`` states it: its name, its share of users, its overrides."""

    name: str
    share: float
    overrides: tuple[tuple[str, Any], ...] = ()


def parse_variants(spec: str) -> tuple[VariantSpec, ...]:
    """``"A=50; B=50 ctr_weight=0 mmr_lambda=0.8"`` → variants; empty → one variant A without overrides."""
    if not spec.strip():
        return (VariantSpec(DEFAULT_VARIANT, 1.0),)
    out: list[VariantSpec] = []
    for part in spec.split(";"):
        words = part.split()
        if not words:
            continue
        name, sep, share_text = words[0].partition("=")
        if not sep or not _VARIANT_NAME.fullmatch(name):
            raise SettingsError(f"XREC_VARIANTS: {words[0]!r} is not name=share (a name of letters, digits, _ or -)")
        try:
            share = float(share_text)
        except ValueError:
            share = math.nan
        if not math.isfinite(share) or share <= 0:
            raise SettingsError(f"XREC_VARIANTS: the share of {name} must be a positive number, not {share_text!r}")
        overrides: list[tuple[str, Any]] = []
        for word in words[1:]:
            key, sep, raw = word.partition("=")
            if not sep or key not in VARIANT_SETTINGS:
                raise SettingsError(
                    f"XREC_VARIANTS: variant {name} cannot set {word!r}; it may set {', '.join(VARIANT_SETTINGS)}"
                )
            overrides.append((key, _coerce(key, _HINTS[key], raw)))
        out.append(VariantSpec(name, share, tuple(overrides)))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise SettingsError(f"XREC_VARIANTS names a variant twice: {', '.join(names)}")
    return tuple(out)


def parse_event_weights(spec: str) -> dict[str, float]:
    """``"view=0.3,click=1"`` → dict; every event type must end up with a weight."""
    weights = dict(parse_pairs(DEFAULT_EVENT_WEIGHTS))
    weights.update(parse_pairs(spec))
    unknown = set(weights) - set(EVENT_TYPES)
    if unknown:
        raise SettingsError(f"XREC_EVENT_WEIGHTS names unknown event types: {', '.join(sorted(unknown))}")
    return weights


def parse_pairs(spec: str) -> list[tuple[str, float]]:
    pairs = []
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        try:
            weight = float(value)
            if not math.isfinite(weight):
                raise ValueError(value)
            pairs.append((key.strip(), weight))
        except ValueError:
            raise SettingsError(f"XREC_EVENT_WEIGHTS: cannot read {part!r} (expected type=weight)") from None
        if not sep:
            raise SettingsError(f"XREC_EVENT_WEIGHTS: cannot read {part!r} (expected type=weight)")
    return pairs


def settings_table_markdown() -> str:
    """The README's configuration table, generated so it cannot drift from the code."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for f in fields(Settings):
        default = f.default
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(f"| `{env_name(f.name)}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows)
