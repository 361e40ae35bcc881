"""A/B variants: which ranking settings rank a user's lists.

``XREC_VARIANTS`` splits users into named variants by share; each variant may override ranking
settings (``config.VARIANT_SETTINGS``). A user's variant is a pure function of their id (a keyed
hash), so it is the same on every worker, after every restart and rebalance, with no state to keep;
changing the shares moves only the users whose hash falls across a moved boundary.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from itertools import accumulate

from xrec.config import Settings, parse_variants

#: Keys the assignment hash, so variant membership is independent of any other hash of user ids
#: (Kafka's partitioner, sampling in other tools).
_PERSON = b"xrec-variant"


class Variants:
    """The variants of one deployment: their names, settings and the assignment of users."""

    def __init__(self, settings: Settings) -> None:
        specs = parse_variants(settings.variants)
        self.names: tuple[str, ...] = tuple(s.name for s in specs)
        self.settings: dict[str, Settings] = {s.name: settings.replace(variants="", **dict(s.overrides)) for s in specs}
        total = sum(s.share for s in specs)
        self._upper = list(accumulate(s.share / total for s in specs))[:-1]  # the last bound is 1

    @property
    def default(self) -> str:
        return self.names[0]

    def of(self, user_id: str) -> str:
        """The variant of a user: the same for the same id, everywhere and always."""
        if len(self.names) == 1:
            return self.names[0]
        digest = hashlib.blake2b(user_id.encode(), digest_size=8, person=_PERSON).digest()
        point = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
        return self.names[bisect_right(self._upper, point)]
