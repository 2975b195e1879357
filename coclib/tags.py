"""Clash of Clans tags: normalisation and validation."""

from __future__ import annotations

import re

from coclib.errors import InvalidTagError

# The game's tag alphabet: a tag is a base-14 number written in these digits.
TAG_ALPHABET = "0289PYLQGRJCUV"
# Real tags are 3 to 14 characters after '#'.
TAG_PATTERN = re.compile(rf"#[{TAG_ALPHABET}]{{3,14}}")


def normalise_tag(raw: str) -> str:
    """The tag the way the game writes it: stripped, upper case, `O` read as `0`, with `#`."""
    tag = raw.strip().upper().replace("O", "0")
    return tag if tag.startswith("#") else f"#{tag}"


def parse_tag(raw: object) -> str:
    """Normalise and validate a tag; raise `InvalidTagError` saying what is wrong."""
    if not isinstance(raw, str):
        raise InvalidTagError(f"tag must be a string, got {type(raw).__name__}")
    tag = normalise_tag(raw)
    if not TAG_PATTERN.fullmatch(tag):
        shown = raw if len(raw) <= 40 else raw[:40] + "…"
        raise InvalidTagError(f"{shown!r} is not a tag: expected '#' and 3-14 of {TAG_ALPHABET}")
    return tag
