"""Reading a subject line: reply/forward prefixes and case references (PROTOCOL.md).

Everything here is pure and total: any text in, an answer out, in time linear in the
length of the subject.
"""
import functools
import re

_REPLY_PREFIXES = re.compile(
    r"(?:\s*"
    r"(?:re|fwd?|aw|sv|vs|antw|r(?:e\u0301?|é)f\.?|wg|tr)"  # Réf may arrive decomposed
    r"\s*(?:(?:\[[0-9]+\]|\([0-9]+\))\s*)?"  # counters as in 'Re[2]:' and 'Re(2):'
    r":)+",
    re.IGNORECASE,
)

# Case numbers are stored as 64-bit integers; a longer digit run is not a reference.
_MAX_CASE_DIGITS = 18


def strip_reply_prefixes(subject: str) -> str:
    """The subject without its leading reply/forward prefixes, stripped.

    Mail clients stack prefixes in many languages ('Re: AW: Fwd:', 'SV:', 'Antw:',
    'Réf.:', 'WG:', 'TR:', 'Re[2]:'); none of them carries meaning for the protocol.
    """
    match = _REPLY_PREFIXES.match(subject)
    return subject[match.end() if match else 0 :].strip()


def find_case_numbers(subject: str, prefix: str) -> tuple[int, ...]:
    """The case numbers referenced as PREFIX-NUMBER, in order of appearance, without repeats.

    Case-insensitive, brackets optional, '#' allowed before the number: 'case-1042',
    '[CASE-#1042]'. The reference must stand on its own: 'CASE 1042', 'XCASE-12' and
    'CASE-12a' are not references, and neither is a number of more than 18 digits.
    """
    numbers = (int(m[1]) for m in _reference_pattern(prefix).finditer(subject))
    return tuple(dict.fromkeys(numbers))


def remove_case_references(subject: str, prefix: str) -> str:
    """The subject without case references, bracketed or bare, whitespace collapsed.

    Gives a clean subject for a new case opened from a mail that named another one.
    """
    return " ".join(_removal_pattern(prefix).sub(" ", subject).split())


def _reference(prefix: str) -> str:
    return rf"(?<!\w){re.escape(prefix)}-#?([0-9]{{1,{_MAX_CASE_DIGITS}}})(?!\w)"


@functools.lru_cache(maxsize=8)
def _reference_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(_reference(prefix), re.IGNORECASE)


@functools.lru_cache(maxsize=8)
def _removal_pattern(prefix: str) -> re.Pattern[str]:
    ref = _reference(prefix)
    return re.compile(rf"\[\s*{ref}\s*\]|\(\s*{ref}\s*\)|{ref}", re.IGNORECASE)
