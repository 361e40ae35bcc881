"""Language resolution (``xrec.langid``): a missing label is identified, a wrong one corrected, an unknown one kept."""

from __future__ import annotations

import pytest

from xrec.langid import UNDETERMINED, LanguageResolver, base_language

GERMAN = "Der Trainer lobte nach dem Spiel die Abwehr, die keinen einzigen Torschuss zugelassen hatte."
MANDARIN = (
    "球隊在主場以三比零擊敗對手，教練在賽後記者會上稱讚了防守球員的表現。"
    "他說這是本賽季最重要的一場勝利，球員們在整場比賽中都保持了專注和紀律。"
)
TIGRINYA = "ኣብ ከተማ ኣስመራ ዝተኻየደ ናይ ብስክሌታ ውድድር ብዙሓት ተሳተፍቲ ነይሮምዎ፣ ተዓዘብቲ ድማ ብዙሓት ነይሮም።"


@pytest.mark.parametrize(
    ("tag", "base"),
    [
        ("en", "en"),
        ("en-US", "en"),
        ("eng", "en"),
        ("zh-Hant", "zh"),
        ("yue", "zh"),
        ("cmn", "zh"),
        ("lug", "lg"),
        ("pcm", "pcm"),
        ("", UNDETERMINED),
        (None, UNDETERMINED),
    ],
)
def test_labels_compare_by_their_base_language(tag: str | None, base: str) -> None:
    assert base_language(tag) == base


def test_a_missing_label_is_identified_from_the_text() -> None:
    resolver = LanguageResolver("missing")
    got = resolver.resolve(None, GERMAN)
    assert (got.lang, got.source) == ("de", "identified")


def test_text_without_letters_stays_undetermined() -> None:
    got = LanguageResolver("correct").resolve(None, "12 345 -- 678")
    assert (got.lang, got.source) == (UNDETERMINED, "unknown")


def test_an_identified_language_is_written_the_way_the_catalog_writes_it() -> None:
    resolver = LanguageResolver("missing")
    resolver.learn_label("deu")  # a catalog labelled with ISO 639-3
    assert resolver.resolve(None, GERMAN).lang == "deu"


def test_a_wrong_label_is_corrected_only_in_correct_mode() -> None:
    assert LanguageResolver("correct").resolve("en", MANDARIN).source == "corrected"
    assert LanguageResolver("correct").resolve("en", MANDARIN).lang == "zh"
    assert LanguageResolver("missing").resolve("en", MANDARIN).lang == "en"
    assert LanguageResolver("off").resolve(None, MANDARIN).lang == UNDETERMINED


def test_a_label_the_identifier_does_not_know_is_never_overruled() -> None:
    # py3langid has no Tigrinya and reads it as Amharic, confidently: the label must stand.
    got = LanguageResolver("correct").resolve("tir", TIGRINYA)
    assert (got.lang, got.source) == ("tir", "label")


def test_a_label_of_the_same_base_language_is_kept_as_written() -> None:
    assert LanguageResolver("correct").resolve("zh-hant", MANDARIN).lang == "zh-hant"
    assert LanguageResolver("correct").resolve("de-AT", GERMAN).lang == "de-AT"


def test_a_short_text_never_overrules_a_label() -> None:
    assert LanguageResolver("correct").resolve("fr", "Tor!").lang == "fr"
