"""Reply prefixes and case references in subject lines (PROTOCOL.md)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.subject import find_case_numbers, remove_case_references, strip_reply_prefixes


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        pytest.param("Re: printer jam", "printer jam", id="re"),
        pytest.param("RE : printer jam", "printer jam", id="space-before-colon"),
        pytest.param("Fwd: printer jam", "printer jam", id="fwd"),
        pytest.param("Fw: printer jam", "printer jam", id="fw"),
        pytest.param("FW: printer jam", "printer jam", id="fw-upper"),
        pytest.param("AW: printer jam", "printer jam", id="aw-german"),
        pytest.param("SV: printer jam", "printer jam", id="sv-swedish"),
        pytest.param("VS: printer jam", "printer jam", id="vs-finnish"),
        pytest.param("Antw: printer jam", "printer jam", id="antw-dutch"),
        pytest.param("Réf.: printer jam", "printer jam", id="ref-french"),
        pytest.param("RÉF. : printer jam", "printer jam", id="ref-french-upper"),
        pytest.param("Re\u0301f.: printer jam", "printer jam", id="ref-decomposed-accent"),
        pytest.param("Ref: printer jam", "printer jam", id="ref"),
        pytest.param("WG: printer jam", "printer jam", id="wg-german"),
        pytest.param("TR: printer jam", "printer jam", id="tr-french"),
        pytest.param("Re[2]: printer jam", "printer jam", id="counter-brackets"),
        pytest.param("Re(2): printer jam", "printer jam", id="counter-parens"),
        pytest.param("Re [3] : printer jam", "printer jam", id="counter-spaced"),
        pytest.param(
            "Re: RE : Fwd: AW: SV: Antw: Réf.: [SEV-2] x", "[SEV-2] x", id="stacked-mix"
        ),
        pytest.param("re:fwd:printer jam", "printer jam", id="no-spaces"),
        pytest.param("  Re:   printer jam  ", "printer jam", id="surrounding-space"),
        pytest.param("printer jam", "printer jam", id="no-prefix"),
        pytest.param("Re printer jam", "Re printer jam", id="no-colon"),
        pytest.param("Are: you there", "Are: you there", id="word-ending-in-re"),
        pytest.param("Trade: numbers", "Trade: numbers", id="word-starting-with-tr"),
        pytest.param("Antwort: later", "Antwort: later", id="longer-word"),
        pytest.param("printer Re: jam", "printer Re: jam", id="prefix-not-leading"),
        pytest.param("Re:", "", id="only-prefix"),
        pytest.param("", "", id="empty"),
    ],
)
def test_strip_reply_prefixes(subject: str, expected: str) -> None:
    assert strip_reply_prefixes(subject) == expected


@pytest.mark.parametrize(
    ("subject", "prefix", "expected"),
    [
        pytest.param("[CASE-1042] printer jam", "CASE", (1042,), id="bracketed"),
        pytest.param("Re: case-1042", "CASE", (1042,), id="lower-case"),
        pytest.param("[CASE-#1042] printer", "CASE", (1042,), id="hash-bracketed"),
        pytest.param("CASE-#7", "CASE", (7,), id="hash-bare"),
        pytest.param("(CASE-9) printer", "CASE", (9,), id="parenthesised"),
        pytest.param("see CASE-12.", "CASE", (12,), id="end-of-sentence"),
        pytest.param("Case-0042", "CASE", (42,), id="leading-zeros"),
        pytest.param(
            "CASE-12 and [CASE-7] and case-12", "CASE", (12, 7), id="order-without-repeats"
        ),
        pytest.param("CASE 1042", "CASE", (), id="space-is-not-a-reference"),
        pytest.param("XCASE-12", "CASE", (), id="glued-to-word"),
        pytest.param("_CASE-12", "CASE", (), id="glued-to-underscore"),
        pytest.param("CASE-12a", "CASE", (), id="number-then-letter"),
        pytest.param("CASE-12_3", "CASE", (), id="number-then-underscore"),
        pytest.param("CASE--12", "CASE", (), id="double-dash"),
        pytest.param("CASE-#-12", "CASE", (), id="hash-then-dash"),
        pytest.param("CASE_12", "CASE", (), id="underscore-separator"),
        pytest.param("CASE-" + "1" * 19, "CASE", (), id="too-many-digits"),
        pytest.param("CASE-" + "9" * 18, "CASE", (10**18 - 1,), id="most-digits"),
        pytest.param("[tkt_2-5] re: [TKT_2-#6]", "TKT_2", (5, 6), id="custom-prefix"),
        pytest.param("[CASE-5]", "TKT", (), id="other-prefix"),
        pytest.param("", "CASE", (), id="empty"),
    ],
)
def test_find_case_numbers(subject: str, prefix: str, expected: tuple[int, ...]) -> None:
    assert find_case_numbers(subject, prefix) == expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        pytest.param("Re: [CASE-12] printer jam", "Re: printer jam", id="bracketed"),
        pytest.param("[CASE-#12]   printer  jam", "printer jam", id="hash-and-spaces"),
        pytest.param("[ CASE-12 ] printer", "printer", id="spaces-inside-brackets"),
        pytest.param("printer CASE-12 jam", "printer jam", id="bare"),
        pytest.param("printer (case-12) jam", "printer jam", id="parenthesised"),
        pytest.param("[CASE-1][CASE-2]", "", id="only-references"),
        pytest.param("a\n[CASE-1]\tb", "a b", id="whitespace-collapsed"),
        pytest.param("CASE 12 printer", "CASE 12 printer", id="not-a-reference"),
        pytest.param("XCASE-12 printer", "XCASE-12 printer", id="glued-kept"),
        pytest.param("[CASE-12a] printer", "[CASE-12a] printer", id="number-then-letter-kept"),
    ],
)
def test_remove_case_references(subject: str, expected: str) -> None:
    assert remove_case_references(subject, "CASE") == expected


_REFERENCE_PIECES = st.sampled_from(
    ["CASE", "case", "-", "#", "[", "]", "(", ")", "1", "42", " ", "\n", "x", "_", "Re:", "\x00"]
)
_SUBJECTS = st.text() | st.lists(_REFERENCE_PIECES, max_size=30).map("".join)


@settings(database=None)
@given(_SUBJECTS)
def test_subject_functions_are_total(subject: str) -> None:
    numbers = find_case_numbers(subject, "CASE")
    assert all(isinstance(n, int) and n >= 0 for n in numbers)
    assert len(set(numbers)) == len(numbers)
    assert isinstance(strip_reply_prefixes(subject), str)
    assert find_case_numbers(remove_case_references(subject, "CASE"), "CASE") == ()
