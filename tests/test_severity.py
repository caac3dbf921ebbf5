"""The severity grammar of PROTOCOL.md, its near misses, and hostile subjects."""
import time

import pytest
from _pytest.mark import ParameterSet
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from routing.severity import Outcome, SeverityLevel, SeverityReading, read_severity
from routing.subject import strip_reply_prefixes

LEVELS = (
    SeverityLevel(1, "Critical", ("urgent",), "Production down, no workaround"),
    SeverityLevel(2, "High"),
    SeverityLevel(3, "Medium", ("normal",)),
    SeverityLevel(4, "Low"),
)

CUSTOM = (
    SeverityLevel(1, "Blocker", ("show stopper", "v.i.p.")),
    SeverityLevel(2, "Major"),
    SeverityLevel(3, "Minor", ("nice-to-have",)),
    SeverityLevel(4, "Trivial"),
    SeverityLevel(5, "Question", ("how to",)),
)

GERMAN = (SeverityLevel(1, "Kritisch", ("dringend",)), SeverityLevel(2, "Groß"))


def row(subject: str, outcome: Outcome, level: int | None, *tags: str, id: str) -> ParameterSet:
    return pytest.param(subject, outcome, level, tags, id=id)


TABLE = [
    # SEV / SEVERITY [LEVEL] number, every separator
    row("SEV-1 db down", "tagged", 1, "SEV-1", id="sev-dash"),
    row("SEV1 db down", "tagged", 1, "SEV1", id="sev-no-separator"),
    row("sev 2 slow queries", "tagged", 2, "sev 2", id="sev-space"),
    row("Severity 3 question", "tagged", 3, "Severity 3", id="severity-space"),
    row("Severity level 4 typo", "tagged", 4, "Severity level 4", id="severity-level"),
    row("severity: 2 slow", "tagged", 2, "severity: 2", id="severity-colon"),
    row("SEVERITY-LEVEL-1 outage", "tagged", 1, "SEVERITY-LEVEL-1", id="severity-level-dashes"),
    row("SeverityLevel3 x", "tagged", 3, "SeverityLevel3", id="severity-level-glued"),
    row("Sev#2 slow", "tagged", 2, "Sev#2", id="sev-hash"),
    row("Sev_3 slow", "tagged", 3, "Sev_3", id="sev-underscore"),
    row("Severity=2 slow", "tagged", 2, "Severity=2", id="severity-equals"),
    row("SEV - 1 outage", "tagged", 1, "SEV - 1", id="separators-repeat"),
    row("SEV-01 outage", "tagged", 1, "SEV-01", id="leading-zero"),
    row("[SEV-1] db down", "tagged", 1, "[SEV-1]", id="sev-bracketed"),
    row("(SEV-1) db down", "tagged", 1, "(SEV-1)", id="sev-parenthesised"),
    row("db down [ sev-1 ]", "tagged", 1, "[ sev-1 ]", id="sev-bracketed-spaces"),
    row("[SEV-1 db down", "tagged", 1, "SEV-1", id="sev-unclosed-bracket"),
    row("db down, SEV-2", "tagged", 2, "SEV-2", id="sev-at-end"),
    row("Outage, SEV-1.", "tagged", 1, "SEV-1", id="sev-end-of-sentence"),
    row("Re: SEV-1: db down", "tagged", 1, "SEV-1", id="sev-after-reply-prefix"),
    row("SEV\n1 db down", "tagged", 1, "SEV 1", id="newline-is-a-space"),
    row("［ＳＥＶ－２］ slow", "tagged", 2, "[SEV-2]", id="full-width"),
    # any number after the label is an attempt
    row("SEV-0 x", "invalid_level", None, "SEV-0", id="sev-zero"),
    row("SEV-5 x", "invalid_level", None, "SEV-5", id="sev-five"),
    row("SEV-10 x", "invalid_level", None, "SEV-10", id="sev-ten"),
    row("Severity 12 x", "invalid_level", None, "Severity 12", id="severity-twelve"),
    row("[SEV-5] x", "invalid_level", None, "[SEV-5]", id="sev-five-bracketed"),
    row("SEV-" + "9" * 30, "invalid_level", None, "SEV-" + "9" * 30, id="sev-huge-number"),
    # near misses of the numbered form
    row("SEV-1a build", "untagged", None, id="number-then-letter"),
    row("SEV-12a build", "untagged", None, id="numbers-then-letter"),
    row("SEV-1_2", "untagged", None, id="number-then-underscore"),
    row("SEV-1.5", "untagged", None, id="decimal"),
    row("XSEV-1 x", "untagged", None, id="glued-to-word"),
    row("_SEV-1 x", "untagged", None, id="glued-to-underscore"),
    row("Several 2 users", "untagged", None, id="several"),
    row("severe 1 outage", "untagged", None, id="severe"),
    row("Seven 2 dwarfs", "untagged", None, id="seven"),
    row("SEV\x001", "untagged", None, id="nul-is-no-separator"),
    row("SEV-", "untagged", None, id="sev-without-number"),
    # [S3]: square brackets only, exactly one digit
    row("[S3] question", "tagged", 3, "[S3]", id="s-bracketed"),
    row("[s1] down", "tagged", 1, "[s1]", id="s-lower"),
    row("[ S2 ] slow", "tagged", 2, "[ S2 ]", id="s-spaces-inside"),
    row("S3 question", "untagged", None, id="s-bare"),
    row("(S3) question", "untagged", None, id="s-parenthesised"),
    row("[S12] x", "untagged", None, id="s-two-digits"),
    row("[S3a] x", "untagged", None, id="s-digit-then-letter"),
    row("[S9] x", "invalid_level", None, "[S9]", id="s-out-of-range"),
    row("[S0] x", "invalid_level", None, "[S0]", id="s-zero"),
    # P + one digit, bracketed or parenthesised
    row("[P1] db down", "tagged", 1, "[P1]", id="p-bracketed"),
    row("(p2) slow", "tagged", 2, "(p2)", id="p-parenthesised"),
    row("( P3 ) x", "tagged", 3, "( P3 )", id="p-spaces-inside"),
    row("P1 db down", "untagged", None, id="p-bare"),
    row("[P10] x", "untagged", None, id="p-two-digits"),
    row("(P10) x", "untagged", None, id="p-two-digits-parenthesised"),
    row("[P-1] x", "untagged", None, id="p-dash"),
    row("[P1) x", "untagged", None, id="p-mismatched-brackets"),
    row("[P7] x", "invalid_level", None, "[P7]", id="p-out-of-range"),
    row("[P0] x", "invalid_level", None, "[P0]", id="p-zero"),
    # a level name or alias, bracketed or parenthesised
    row("[Critical] db down", "tagged", 1, "[Critical]", id="name-bracketed"),
    row("(high) slow", "tagged", 2, "(high)", id="name-parenthesised"),
    row("[URGENT] db down", "tagged", 1, "[URGENT]", id="alias-upper"),
    row("[Normal] question", "tagged", 3, "[Normal]", id="alias"),
    row("[ low ] typo", "tagged", 4, "[ low ]", id="name-spaces-inside"),
    row("x [low]", "tagged", 4, "[low]", id="name-at-end"),
    row("[[High]]", "tagged", 2, "[High]", id="name-double-brackets"),
    row("［ＨＩＧＨ］ slow", "tagged", 2, "[HIGH]", id="name-full-width"),
    row("[Highest] x", "untagged", None, id="longer-word-bracketed"),
    row("[High CPU] x", "untagged", None, id="name-plus-word-bracketed"),
    row("(Medium x", "untagged", None, id="name-unclosed"),
    row("[High) x", "untagged", None, id="name-mismatched-brackets"),
    # label, then ':' '=' or space, then a name or alias
    row("Priority: High x", "tagged", 2, "Priority: High", id="priority-colon"),
    row("severity=low x", "tagged", 4, "severity=low", id="severity-equals-name"),
    row("Severity: high x", "tagged", 2, "Severity: high", id="severity-colon-name"),
    row("Prio critical db down", "tagged", 1, "Prio critical", id="prio-space"),
    row("PRIORITY : urgent", "tagged", 1, "PRIORITY : urgent", id="priority-spaced-colon"),
    row("Priority = Normal", "tagged", 3, "Priority = Normal", id="priority-spaced-equals"),
    row("db down, priority:low", "tagged", 4, "priority:low", id="priority-at-end"),
    row("Priority: [High] x", "tagged", 2, "[High]", id="priority-bracketed-name"),
    row("Priority: Highest x", "untagged", None, id="priority-longer-word"),
    row("Priority customer x", "untagged", None, id="priority-other-word"),
    row("Priority: 1 x", "untagged", None, id="priority-number"),
    row("Prio 2 x", "untagged", None, id="prio-number"),
    row("Priority - High", "untagged", None, id="priority-dash"),
    row("XPriority: High", "untagged", None, id="priority-glued"),
    row("Prioritize: High", "untagged", None, id="priority-longer-label"),
    row("Sev: High", "untagged", None, id="sev-label-with-name"),
    # a bare word is never a tag
    row("High CPU usage on node 3", "untagged", None, id="bare-high"),
    row("Low disk warning", "untagged", None, id="bare-low"),
    row("Critical: db down", "untagged", None, id="bare-critical-colon"),
    row("urgent please help", "untagged", None, id="bare-alias"),
    row("High priority: db down", "untagged", None, id="high-priority-words"),
    row("", "untagged", None, id="empty"),
    row(" \n\t ", "untagged", None, id="blank"),
    # several tags
    row("[SEV-2] [High] replication lag", "tagged", 2, "[SEV-2]", "[High]", id="agree"),
    row("[SEV-1] [SEV-1] x", "tagged", 1, "[SEV-1]", "[SEV-1]", id="repeated"),
    row(
        "[P1] [Critical] SEV-1 Priority: urgent", "tagged", 1,
        "[P1]", "[Critical]", "SEV-1", "Priority: urgent", id="four-agree",
    ),
    row(
        "[SEV-1] db down Priority: Low", "ambiguous", None,
        "[SEV-1]", "Priority: Low", id="disagree",
    ),
    row("(p2) [Low] x", "ambiguous", None, "(p2)", "[Low]", id="disagree-short-forms"),
    row(
        "[SEV-5] [SEV-1] Priority: Low", "invalid_level", None,
        "[SEV-5]", "[SEV-1]", "Priority: Low", id="invalid-wins-over-ambiguous",
    ),
    row("[High] SEV-9", "invalid_level", None, "[High]", "SEV-9", id="invalid-with-valid"),
    # reply prefixes are set aside
    row("Re: RE : Fwd: AW: SV: Antw: Réf.: [SEV-2] x", "tagged", 2, "[SEV-2]", id="reply-prefixes"),
    row("Re[2]: Fw: (p3) x", "tagged", 3, "(p3)", id="reply-counter"),
    row("\x00[SEV-2]\x00", "tagged", 2, "[SEV-2]", id="nul-around-tag"),
]


@pytest.mark.parametrize(("subject", "outcome", "level", "tags"), TABLE)
def test_read_severity(
    subject: str, outcome: Outcome, level: int | None, tags: tuple[str, ...]
) -> None:
    reading = read_severity(subject, LEVELS)
    assert (reading.outcome, reading.level, reading.tags) == (outcome, level, tags)


CUSTOM_TABLE = [
    row("SEV-5 how do I export", "tagged", 5, "SEV-5", id="fifth-level"),
    row("[P5] x", "tagged", 5, "[P5]", id="fifth-level-p"),
    row("[S5] x", "tagged", 5, "[S5]", id="fifth-level-s"),
    row("[SEV-6] x", "invalid_level", None, "[SEV-6]", id="sixth-level"),
    row("[show stopper] x", "tagged", 1, "[show stopper]", id="alias-with-space"),
    row("[Show   Stopper] x", "tagged", 1, "[Show   Stopper]", id="alias-wider-space"),
    row("Priority: show stopper", "tagged", 1, "Priority: show stopper", id="label-alias-space"),
    row("Priority: show\nstopper", "tagged", 1, "Priority: show stopper", id="label-alias-newline"),
    row("Priority: show stopperish", "untagged", None, id="label-alias-longer"),
    row("Priority: show", "untagged", None, id="label-alias-half"),
    row("Prio: how to", "tagged", 5, "Prio: how to", id="label-alias-question"),
    row("[nice-to-have] x", "tagged", 3, "[nice-to-have]", id="alias-with-hyphens"),
    row("Priority: V.I.P. x", "tagged", 1, "Priority: V.I.P.", id="alias-with-dots"),
    row("Priority: vxixpx", "untagged", None, id="alias-dots-are-literal"),
    row("[High] x", "untagged", None, id="default-name-not-configured"),
    row("[Major] (minor)", "ambiguous", None, "[Major]", "(minor)", id="custom-disagree"),
]


@pytest.mark.parametrize(("subject", "outcome", "level", "tags"), CUSTOM_TABLE)
def test_read_severity_custom_levels(
    subject: str, outcome: Outcome, level: int | None, tags: tuple[str, ...]
) -> None:
    reading = read_severity(subject, list(CUSTOM))
    assert (reading.outcome, reading.level, reading.tags) == (outcome, level, tags)


@pytest.mark.parametrize(
    ("subject", "level"),
    [
        pytest.param("[Groß] x", 2, id="as-configured"),
        pytest.param("[GROSS] x", 2, id="casefolded-bracketed"),
        pytest.param("Priority: GROSS", 2, id="casefolded-label"),
        pytest.param("Prio DRINGEND", 1, id="alias-upper"),
    ],
)
def test_read_severity_casefolds_names(subject: str, level: int) -> None:
    assert read_severity(subject, GERMAN).level == level


@pytest.mark.parametrize(
    ("subject", "description"),
    [
        pytest.param("[SEV-2] x", 'tag "[SEV-2]" -> level 2', id="tagged"),
        pytest.param("[SEV-2] [High] x", 'tags "[SEV-2]", "[High]" -> level 2', id="tagged-several"),
        pytest.param("printer jam", "no severity tag", id="untagged"),
        pytest.param("SEV-5 x", "SEV-5 is not a configured level", id="invalid"),
        pytest.param(
            "[SEV-5] [High] SEV-0", "[SEV-5], SEV-0 are not configured levels", id="invalid-several"
        ),
        pytest.param(
            "[SEV-1] db down Priority: Low",
            'tags disagree: "[SEV-1]" (1), "Priority: Low" (4)',
            id="ambiguous",
        ),
    ],
)
def test_describe(subject: str, description: str) -> None:
    assert read_severity(subject, LEVELS).describe() == description


def test_describe_stays_short() -> None:
    reading = read_severity("SEV-" + "7" * 5000, LEVELS)
    assert reading.outcome == "invalid_level"
    assert len(reading.describe()) < 80


HOSTILE = [
    pytest.param("[" * 20_000, id="open-brackets"),
    pytest.param("(" + " " * 20_000, id="open-paren-then-spaces"),
    pytest.param("[ " * 10_000 + "]", id="bracket-space-runs"),
    pytest.param("SEV" * 7_000, id="sev-repeated"),
    pytest.param("sev" + " -_:=#" * 4_000 + "x", id="separator-run"),
    pytest.param("sev " * 5_000, id="labels-without-numbers"),
    pytest.param("Severity level " * 1_500, id="severity-level-repeated"),
    pytest.param("Priority:" + " " * 20_000 + "x", id="label-then-spaces"),
    pytest.param("Priority: show " * 2_000, id="label-half-alias-repeated"),
    pytest.param("Re: " * 5_000 + "x", id="reply-prefixes"),
    pytest.param("Re" + " " * 20_000, id="prefix-then-spaces"),
    pytest.param("1" * 20_000, id="digits"),
    pytest.param("\x00\n\u2028\U0001f600" * 5_000, id="control-and-emoji"),
]


@pytest.mark.parametrize("subject", HOSTILE)
def test_hostile_subjects_are_read_quickly(subject: str) -> None:
    started = time.perf_counter()
    for levels in (LEVELS, CUSTOM):
        read_severity(subject, levels)
    assert time.perf_counter() - started < 1.0


def test_long_subject_keeps_its_tag() -> None:
    reading = read_severity("x " * 5_000 + "[SEV-2] " + "y" * 10_000, LEVELS)
    assert (reading.outcome, reading.level, reading.tags) == ("tagged", 2, ("[SEV-2]",))


_TAG_PIECES = st.sampled_from(
    [
        "SEV", "Severity", "level", "Priority", "Prio", "P", "S", "High", "low", "urgent",
        "1", "2", "5", "12", "-", "_", ":", "=", "#", " ", "\n", "[", "]", "(", ")", "a",
        "Re:", "Fwd :", "Re[2]:", ".", "\x00", "Ｓ",
    ]
)
_SUBJECTS = st.text() | st.lists(_TAG_PIECES, max_size=25).map("".join)


@settings(database=None)
@given(_SUBJECTS)
def test_read_severity_is_total_and_consistent(subject: str) -> None:
    reading = read_severity(subject, LEVELS)
    assert isinstance(reading, SeverityReading)
    assert len(reading.tags) == len(reading.tag_levels)
    assert (reading.outcome == "untagged") == (not reading.tags)
    assert (reading.level is not None) == (reading.outcome == "tagged")
    assert reading.level in (None, 1, 2, 3, 4)
    assert isinstance(reading.describe(), str)


@settings(database=None)
@given(_SUBJECTS, st.sampled_from(["Re: ", "RE : ", "Fwd:", "AW: SV: ", "Re[2]: "]))
def test_reply_prefix_does_not_change_the_reading(subject: str, prefix: str) -> None:
    assume(strip_reply_prefixes(subject) == subject.strip())
    assert read_severity(prefix + subject, LEVELS) == read_severity(subject, LEVELS)
