"""Valid tags made from numbers, for tests and benchmarks: distinct numbers, distinct tags."""

from __future__ import annotations

from coclib.tags import TAG_ALPHABET


def numbered_tag(n: int, *, lead: str = "Q", width: int = 3) -> str:
    """`#`, `lead` (a letter of the tag alphabet) and `n` in base 14, at least `width` digits."""
    digits = ""
    while n:
        n, d = divmod(n, len(TAG_ALPHABET))
        digits = TAG_ALPHABET[d] + digits
    return f"#{lead}{digits.rjust(width, TAG_ALPHABET[0])}"
