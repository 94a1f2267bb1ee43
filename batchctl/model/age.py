"""Ages given on the command line, such as ``prune --older-than 30d``."""

from __future__ import annotations

import re
from datetime import timedelta

AGE_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
AGE_FORMS = "use 30d, 12h, 90m, 45s or a combination such as 1d12h"


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, or several in that order (``1d12h``).

    Zero is allowed (``0s``: every finished batch, however young). A bare
    number is refused: before deleting anything, nobody should have to guess
    whether ``30`` meant seconds or days."""
    match = AGE_RE.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"invalid age {text!r} ({AGE_FORMS})")
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    try:
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"age {text!r} is too large") from None
