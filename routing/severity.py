"""Severity tags in a subject line: the grammar of PROTOCOL.md, "Severity tags".

A new request must carry a severity tag; the reading tells the caller whether it does,
and if not, what to say in the rejection (no tag, a level that does not exist, or tags
that contradict each other). Every regular expression here runs in time linear in the
length of the subject, whatever the subject contains.
"""
import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Literal, NamedTuple

from routing.subject import strip_reply_prefixes


@dataclass(frozen=True)
class SeverityLevel:
    """A configured level; customers may tag it by number, name or any alias."""

    level: int
    name: str
    aliases: tuple[str, ...] = ()
    description: str = ""


Outcome = Literal["tagged", "untagged", "invalid_level", "ambiguous"]


@dataclass(frozen=True)
class SeverityReading:
    """What a subject says about severity.

    `tags` are the tag texts in subject order, as written except that whitespace shows as
    plain spaces and full-width forms as ASCII; `tag_levels` gives, for each tag, the level
    it names, or None when it names a level that is not configured. `level` is set only
    when the outcome is "tagged".
    """

    outcome: Outcome
    level: int | None
    tags: tuple[str, ...]
    tag_levels: tuple[int | None, ...]

    def describe(self) -> str:
        """One short sentence for logs and replies, naming the tags that decided it."""
        if self.outcome == "untagged":
            return "no severity tag"
        if self.outcome == "tagged":
            noun = "tag" if len(self.tags) == 1 else "tags"
            return f"{noun} {', '.join(_quote(t) for t in self.tags)} -> level {self.level}"
        if self.outcome == "invalid_level":
            bad = [_shorten(t) for t, lv in zip(self.tags, self.tag_levels) if lv is None]
            if len(bad) == 1:
                return f"{bad[0]} is not a configured level"
            return f"{', '.join(bad)} are not configured levels"
        seen = ", ".join(f"{_quote(t)} ({lv})" for t, lv in zip(self.tags, self.tag_levels))
        return f"tags disagree: {seen}"


def read_severity(subject: str, levels: Sequence[SeverityLevel]) -> SeverityReading:
    """Read the severity tags of a subject, after its reply prefixes.

    Choices where PROTOCOL.md is silent:
    - A short form with one digit that is not a configured level (`[P0]`, `[P7]`, `[S9]`)
      is a tag attempt, so it makes the reading invalid_level, like `SEV-5`.
    - `[S3]` counts only in square brackets; `(S3)` is not a tag, while `(P3)` is.
    - Separators may repeat (`SEV - 1`, `severity: 2`); leading zeros are allowed
      (`SEV-01` is level 1). A decimal (`SEV-1.5`) is not a tag.
    - After `Severity`/`Priority`/`Prio` only a name or alias counts, ending at a word
      boundary: `Priority: 1` and `Priority: Highest` are not tags. That form takes only
      these three labels, so `Sev: High` is not a tag.
    - Any invalid tag makes the reading invalid_level, even when other tags disagree:
      the customer first has to learn which levels exist.
    """
    grammar = _grammar(tuple(levels))
    text = strip_reply_prefixes(subject.translate(_FOLD))
    found = chain(_numbered(text, grammar), _bracketed(text, grammar), _labelled(text, grammar))
    hits = sorted(set(found), key=lambda hit: (hit.start, hit.end))
    tags = tuple(text[hit.start : hit.end] for hit in hits)
    tag_levels = tuple(hit.level for hit in hits)
    named = set(tag_levels)
    if not hits:
        return SeverityReading("untagged", None, tags, tag_levels)
    if None in named:
        return SeverityReading("invalid_level", None, tags, tag_levels)
    if len(named) > 1:
        return SeverityReading("ambiguous", None, tags, tag_levels)
    return SeverityReading("tagged", tag_levels[0], tags, tag_levels)


# Whitespace of any kind reads as a space and full-width forms as ASCII. The mapping is
# one character to one, so tag texts keep their place in the subject.
_FOLD = {c: " " for c in range(0x3001) if chr(c).isspace()} | {
    c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)
}

_SEPARATORS = r"[\s\-_:=#]*"
_NUMBERED = re.compile(
    r"(?:(\[)\s*|(\()\s*)?"  # an enclosing bracket belongs to the tag text
    rf"(?<!\w)sev(?:erity)?(?:{_SEPARATORS}level)?{_SEPARATORS}([0-9]+)(?!\w|\.[0-9])"
    r"(?(1)\s*\])(?(2)\s*\))",
    re.IGNORECASE,
)
_BRACKETED = re.compile(r"\[([^\[\]()]*)\]|\(([^\[\]()]*)\)")
_SHORT = re.compile(r"([ps])([0-9])", re.IGNORECASE)
_LABEL = r"(?<!\w)(?:severity|priority|prio)(?:\s*[:=]\s*|\s+)"

# int() refuses very long digit strings; no level number is this long.
_MAX_LEVEL_DIGITS = 9


class _Hit(NamedTuple):
    start: int
    end: int
    level: int | None


class _Grammar(NamedTuple):
    numbers: frozenset[int]
    names: dict[str, int]
    labelled: re.Pattern[str] | None


@functools.lru_cache(maxsize=8)
def _grammar(levels: tuple[SeverityLevel, ...]) -> _Grammar:
    """The patterns for one set of levels, built once per configuration."""
    spellings = [(name, lv.level) for lv in levels for name in (lv.name, *lv.aliases) if name.strip()]
    names = {_name_key(name): level for name, level in spellings}
    # Both the configured and the casefolded spelling, so 'GROSS' finds 'Groß';
    # longest first, so 'very high' wins over 'very'.
    variants = {v for name, _ in spellings for v in (name, name.casefold())}
    alternatives = sorted(variants, key=len, reverse=True)
    pattern = "|".join(r"\s+".join(map(re.escape, v.split())) for v in alternatives)
    labelled = re.compile(rf"{_LABEL}({pattern})(?!\w)", re.IGNORECASE) if pattern else None
    return _Grammar(frozenset(lv.level for lv in levels), names, labelled)


def _numbered(text: str, grammar: _Grammar) -> Iterator[_Hit]:
    """`SEV-1`, `Severity level 4`, `[sev#2]`: any number after the label is an attempt."""
    for m in _NUMBERED.finditer(text):
        yield _Hit(m.start(), m.end(), _configured(m[3], grammar))


def _bracketed(text: str, grammar: _Grammar) -> Iterator[_Hit]:
    """`[P1]`, `(p2)`, `[S3]` and a level name or alias in brackets or parentheses."""
    for m in _BRACKETED.finditer(text):
        square = m[1] is not None
        content = (m[1] if square else m[2]).strip()
        short = _SHORT.fullmatch(content)
        if short and (square or short[1] in "pP"):
            yield _Hit(m.start(), m.end(), _configured(short[2], grammar))
        elif (level := grammar.names.get(_name_key(content))) is not None:
            yield _Hit(m.start(), m.end(), level)


def _labelled(text: str, grammar: _Grammar) -> Iterator[_Hit]:
    """`Priority: High`, `severity=low`, `Prio critical`."""
    if grammar.labelled is None:
        return
    for m in grammar.labelled.finditer(text):
        if (level := grammar.names.get(_name_key(m[1]))) is not None:
            yield _Hit(m.start(), m.end(), level)


def _configured(digits: str, grammar: _Grammar) -> int | None:
    """The level a tagged number names, or None when no such level is configured."""
    number = int(digits) if len(digits) <= _MAX_LEVEL_DIGITS else None
    return number if number in grammar.numbers else None


def _name_key(name: str) -> str:
    return " ".join(name.casefold().split())


def _shorten(tag: str, limit: int = 40) -> str:
    return tag if len(tag) <= limit else tag[: limit - 1] + "…"


def _quote(tag: str) -> str:
    return f'"{_shorten(tag)}"'
