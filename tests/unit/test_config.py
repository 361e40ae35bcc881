"""Settings from ``XREC_*`` variables: defaults, overrides of every type, refusals that name the variable,
secrets kept out of logs, event weights, and the names that scripts outside the repo rely on."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, get_args, get_type_hints

import orjson
import pytest

from xrec.config import (
    DEFAULT_EVENT_WEIGHTS,
    EVENT_TYPES,
    SECRET_FIELDS,
    Settings,
    SettingsError,
    env_name,
    parse_event_weights,
    settings_table_markdown,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
HINTS = get_type_hints(Settings)
REQUIRED_NAMES = [
    "XREC_KAFKA_BOOTSTRAP",
    "XREC_MODEL",
    "XREC_DEVICE",
    "XREC_STORE_BACKEND",
    "XREC_STORE_PATH",
    "XREC_QDRANT_URL",
    "XREC_WEB_PORT",
    "XREC_TOPIC_ITEMS",
    "XREC_TOPIC_EVENTS",
    "XREC_TOPIC_CONTROL",
    "XREC_TOPIC_RECOMMENDATIONS",
    "XREC_TOPIC_DLQ",
]


def all_env_names() -> list[str]:
    return [env_name(name) for name in FIELDS]


def test_every_name_that_outside_scripts_rely_on_exists() -> None:
    names = set(all_env_names())
    assert [n for n in REQUIRED_NAMES if n not in names] == []


def test_env_names_are_unique_upper_case_and_prefixed() -> None:
    names = all_env_names()
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"XREC_[A-Z0-9_]+", n) for n in names), names
    assert env_name("kafka_bootstrap") == "XREC_KAFKA_BOOTSTRAP"


def test_every_setting_has_a_doc_and_a_plain_type() -> None:
    for name, f in FIELDS.items():
        assert f.metadata.get("doc", "").strip(), name
        hint = HINTS[name]
        assert hint in (str, int, float, bool) or get_args(hint), (name, hint)


# --- defaults ------------------------------------------------------------------------------------


def test_an_empty_environment_gives_the_documented_defaults() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.kafka_bootstrap == ""
    assert s.model == "intfloat/multilingual-e5-small"
    assert s.device == "auto"
    assert s.store_backend == "edge"
    assert s.store_path == ""
    assert s.qdrant_url == "http://localhost:6333"
    assert s.web_port == 6066
    assert s.processing_guarantee == "at_least_once"
    assert (s.topic_items, s.topic_events, s.topic_control, s.topic_recommendations, s.topic_dlq) == (
        "xrec.items",
        "xrec.events",
        "xrec.control",
        "xrec.recommendations",
        "xrec.dlq",
    )
    assert s.weights == parse_event_weights(DEFAULT_EVENT_WEIGHTS)


def test_unrelated_and_empty_variables_are_ignored() -> None:
    s = Settings.from_env({"XREC_WEB_PORT": "", "XREC_MODEL": "", "PATH": "/bin", "xrec_web_port": "1"})
    assert s == Settings()


def test_from_env_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XREC_WEB_PORT", "7001")
    monkeypatch.setenv("XREC_TOPIC_DLQ", "prod.dlq")
    s = Settings.from_env()
    assert (s.web_port, s.topic_dlq) == (7001, "prod.dlq")


def test_home_and_store_dir_follow_xrec_home_and_xrec_store_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XREC_HOME", str(tmp_path / "home"))
    s = Settings.from_env()
    assert s.home_path == tmp_path / "home"
    assert s.store_dir == tmp_path / "home" / "store"
    monkeypatch.delenv("XREC_HOME")
    assert Settings().home_path == Path.home() / ".cache" / "xrec"
    s = Settings.from_env({"XREC_STORE_PATH": str(tmp_path / "edge")})
    assert s.store_dir == tmp_path / "edge"


# --- overrides -----------------------------------------------------------------------------------


def another_valid_value(name: str) -> tuple[str, Any]:
    """A value for the field that differs from its default: the env text and the typed value."""
    hint, default = HINTS[name], FIELDS[name].default
    assert default is not dataclasses.MISSING
    if get_args(hint):
        other = next(v for v in get_args(hint) if v != default)
        return other, other
    if hint is bool:
        return ("false", False) if default else ("true", True)
    if hint is int:
        return str(default + 1), default + 1
    if hint is float:
        return str(default + 0.5), default + 0.5
    if name == "event_weights":
        return "view=0.25", "view=0.25"
    if name == "kafka_version":
        return "4.4.0", "4.4.0"
    if name == "variants":
        return "A=50; B=50 ctr_weight=0", "A=50; B=50 ctr_weight=0"
    return f"custom-{name}", f"custom-{name}"


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_every_setting_is_read_from_its_variable(name: str) -> None:
    raw, expected = another_valid_value(name)
    s = Settings.from_env({env_name(name): raw})
    assert getattr(s, name) == expected
    assert type(getattr(s, name)) is type(expected)
    others = {n: getattr(s, n) for n in FIELDS if n != name}
    assert others == {n: getattr(Settings(), n) for n in FIELDS if n != name}


def test_str_int_float_and_bool_variables_are_converted() -> None:
    s = Settings.from_env(
        {
            "XREC_MODEL": "/models/e5-small",
            "XREC_WEB_PORT": " 8081 ",
            "XREC_HALF_LIFE_HOURS": "12.5",
            "XREC_LIST_LENGTH": "20",
            "XREC_QDRANT_PREFER_GRPC": "off",
            "XREC_STORE_BACKEND": "qdrant",
        }
    )
    assert s.model == "/models/e5-small"
    assert s.web_port == 8081
    assert s.half_life_hours == 12.5
    assert s.list_length == 20
    assert s.qdrant_prefer_grpc is False
    assert s.store_backend == "qdrant"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(t, True) for t in ("1", "true", "YES", " On ")] + [(f, False) for f in ("0", "False", "no", "OFF")],
)
def test_booleans_accept_the_usual_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"XREC_QDRANT_PREFER_GRPC": raw}).qdrant_prefer_grpc is expected


def test_keyword_overrides_win_over_the_environment() -> None:
    s = Settings.from_env({"XREC_WEB_PORT": "7001", "XREC_MODEL": "env-model"}, web_port=7002)
    assert (s.web_port, s.model) == (7002, "env-model")


def test_settings_are_frozen_and_replace_validates() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.web_port = 1  # type: ignore[misc]
    assert s.replace(web_port=7003).web_port == 7003
    with pytest.raises(SettingsError, match="XREC_STORE_BACKEND"):
        s.replace(store_backend="foo")


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("XREC_WEB_PORT", "abc"),
        ("XREC_WEB_PORT", "80.5"),
        ("XREC_WEB_PORT", "99999"),
        ("XREC_WEB_PORT", "-1"),
        ("XREC_BROKER_PORT", "65536"),
        ("XREC_PARTITIONS", "0"),
        ("XREC_PARTITIONS", "four"),
        ("XREC_ITEM_PARTITIONS", "0"),
        ("XREC_INTERESTS_K", "0"),
        ("XREC_HALF_LIFE_HOURS", "fast"),
        ("XREC_HALF_LIFE_HOURS", "nan"),
        ("XREC_HALF_LIFE_HOURS", "inf"),
        ("XREC_MMR_LAMBDA", "-inf"),
        ("XREC_QDRANT_PREFER_GRPC", "maybe"),
        ("XREC_QDRANT_PREFER_GRPC", "2"),
        ("XREC_STORE_BACKEND", "foo"),
        ("XREC_STORE_BACKEND", "Edge"),
        ("XREC_PROCESSING_GUARANTEE", "exactly_twice"),
        ("XREC_LANGUAGE_POLICY", "never"),
        ("XREC_EVENT_WEIGHTS", "teleport=1"),
        ("XREC_EVENT_WEIGHTS", "view"),
        ("XREC_EVENT_WEIGHTS", "view=heavy"),
        ("XREC_EVENT_WEIGHTS", "view=nan"),
    ],
)
def test_a_bad_value_raises_a_settings_error_that_names_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: raw})
    assert variable in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", [n for n in FIELDS if get_args(HINTS[n])])
def test_literal_settings_accept_each_allowed_value_and_refuse_others(name: str) -> None:
    for allowed in get_args(HINTS[name]):
        assert getattr(Settings.from_env({env_name(name): allowed}), name) == allowed
    with pytest.raises(SettingsError, match=env_name(name)) as info:
        Settings(**{name: "foo"})  # type: ignore[arg-type]
    for allowed in get_args(HINTS[name]):
        assert allowed in str(info.value)


# --- secrets -------------------------------------------------------------------------------------


def test_every_secret_looking_field_is_a_secret_field() -> None:
    looks_secret = {n for n in FIELDS if n.endswith(("password", "api_key", "secret"))}
    assert looks_secret <= SECRET_FIELDS
    assert set(FIELDS) >= SECRET_FIELDS


def test_redacted_masks_every_secret_and_keeps_the_rest() -> None:
    env = {env_name(n): f"s3cr3t-{n}" for n in SECRET_FIELDS} | {"XREC_KAFKA_SASL_USERNAME": "alice"}
    s = Settings.from_env(env)
    out = s.redacted()
    assert set(out) == set(FIELDS)
    assert all(out[n] == "***" for n in SECRET_FIELDS)
    assert out["kafka_sasl_username"] == "alice"
    assert out["web_port"] == s.web_port
    text = orjson.dumps(out).decode()
    assert "s3cr3t" not in text
    assert all(getattr(s, n) == f"s3cr3t-{n}" for n in SECRET_FIELDS)  # masking never touches the settings


def test_repr_and_f_strings_of_settings_never_show_secrets() -> None:
    s = Settings.from_env({env_name(n): f"s3cr3t-{n}" for n in SECRET_FIELDS})
    for text in (repr(s), str(s), f"{s}", f"{s!r}", repr([s])):
        assert "s3cr3t" not in text
        assert "kafka_sasl_password='***'" in text


def test_unset_secrets_stay_visibly_empty_when_redacted() -> None:
    out = Settings().redacted()
    assert all(out[n] == "" for n in SECRET_FIELDS)


# --- event weights -------------------------------------------------------------------------------


def test_default_event_weights_cover_every_type_with_negative_dislike_and_skip() -> None:
    weights = parse_event_weights(DEFAULT_EVENT_WEIGHTS)
    assert set(weights) == set(EVENT_TYPES)
    assert weights["dislike"] < 0 and weights["skip"] < 0
    assert all(weights[t] > 0 for t in EVENT_TYPES if t not in ("dislike", "skip"))


def test_a_partial_weight_spec_overrides_only_the_types_it_names() -> None:
    weights = parse_event_weights(" view = 0.1 , purchase=5,, ")
    defaults = parse_event_weights("")
    assert weights["view"] == 0.1 and weights["purchase"] == 5.0
    assert {t: w for t, w in weights.items() if t not in ("view", "purchase")} == {
        t: w for t, w in defaults.items() if t not in ("view", "purchase")
    }
    assert Settings.from_env({"XREC_EVENT_WEIGHTS": "like=-2"}).weights["like"] == -2.0


def test_an_unknown_event_type_in_the_weights_is_named_in_the_error() -> None:
    with pytest.raises(SettingsError, match="XREC_EVENT_WEIGHTS names unknown event types: rocket, teleport"):
        parse_event_weights("view=1,teleport=2,rocket=3")


@pytest.mark.parametrize("spec", ["view", "view:1", "view=", "=1", "view=1=2", "view=inf", "view=-nan"])
def test_a_malformed_weight_spec_is_refused(spec: str) -> None:
    with pytest.raises(SettingsError, match="XREC_EVENT_WEIGHTS"):
        parse_event_weights(spec)


# --- documentation -------------------------------------------------------------------------------


def test_the_settings_table_has_one_well_formed_row_per_setting() -> None:
    lines = settings_table_markdown().splitlines()
    assert lines[:2] == ["| Variable | Default | Meaning |", "|---|---|---|"]
    rows = lines[2:]
    assert len(rows) == len(FIELDS)
    for row, name in zip(rows, FIELDS, strict=True):
        cells = row.split(" | ")
        assert len(cells) == 3 and row.startswith("| ") and row.endswith(" |"), row
        assert cells[0] == f"| `{env_name(name)}`"
        default = FIELDS[name].default
        assert cells[1] == (f"`{default}`" if default not in ("", None) else "(empty)")


def test_the_readme_lists_every_variable() -> None:
    readme = REPO_ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not written yet")
    text = readme.read_text(encoding="utf-8")
    missing = [n for n in all_env_names() if n not in text]
    assert missing == [], f"README.md lacks {missing}; paste `xrec config --markdown` into it"
    assert settings_table_markdown() in text, "README.md's table is stale; paste `xrec config --markdown` into it"


def test_rocksdb_tables_are_refused_with_exactly_once_and_said_why() -> None:
    env = {"XREC_TABLE_STORE": "rocksdb", "XREC_PROCESSING_GUARANTEE": "exactly_once"}
    with pytest.raises(SettingsError, match=r"XREC_TABLE_STORE=rocksdb is not offered with .*exactly_once"):
        Settings.from_env(env)
    assert Settings.from_env({**env, "XREC_PROCESSING_GUARANTEE": "at_least_once"}).table_store == "rocksdb"
