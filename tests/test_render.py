"""Rendering of the shipped templates, overrides, strictness and subject cleaning."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from notifications.render import (
    RenderedMail,
    Renderer,
    TemplateError,
    format_date,
    format_datetime,
    shipped_templates_dir,
    without_tags,
)

STOCKHOLM = ZoneInfo("Europe/Stockholm")
SHIPPED = ("acknowledgment", "rejection", "community", "quota_exceeded")

LEVELS = [
    {"level": 1, "name": "Critical", "description": "Production down, no workaround", "aliases": ["urgent"]},
    {"level": 2, "name": "High", "description": "Major loss of function, no sustainable workaround", "aliases": []},
    {"level": 3, "name": "Medium", "description": "Minor loss of function, workaround exists", "aliases": ["normal"]},
    {"level": 4, "name": "Low", "description": "Cosmetic issues, questions, feature requests", "aliases": []},
]


def ack_context(**ticket: object) -> dict[str, object]:
    base: dict[str, object] = {
        "ref": "CASE-12",
        "subject": "Replication lag on db-2",
        "severity": 2,
        "severity_name": "High",
        "status": "open",
        "due": datetime(2026, 11, 23, 16, 30, tzinfo=STOCKHOLM),
        "reply_address": "support+k3j9x@example.com",
    }
    base.update(ticket)
    return {"ticket": base, "recipient_name": "Dana Scully", "service_name": "Example Support", "levels": LEVELS}


def rejection_context(reason: str, tags: list[str], original_subject: str) -> dict[str, object]:
    return {
        "reason": reason,
        "tags": tags,
        "original_subject": original_subject,
        "mailbox": "support@example.com",
        "levels": LEVELS,
        "recipient_name": "",
        "service_name": "Example Support",
    }


COMMUNITY = {
    "recipient_name": "Sam Lee",
    "original_subject": "How do I export reports?",
    "forum_url": "https://community.example.com/",
    "service_name": "Example Support",
}
QUOTA = {
    "organization": "Acme",
    "used": 12,
    "allowed": 12,
    "contract_year_start": date(2026, 3, 1),
    "sender": "bob@acme.example",
    "original_subject": "[SEV-3] Export fails",
    "service_name": "Example Support",
}


@pytest.fixture
def renderer() -> Renderer:
    return Renderer([shipped_templates_dir()])


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# -- shipped templates -------------------------------------------------------------


def test_acknowledgment_states_reference_severity_and_response_target(renderer: Renderer) -> None:
    mail = renderer.render("acknowledgment", ack_context())

    assert mail.subject == "[CASE-12] Replication lag on db-2"
    for part in (mail.text, mail.html):
        assert part is not None
        assert "CASE-12" in part
        assert "SEV-2 (High)" in part
        assert "Mon 23 Nov 2026 16:30 CET" in part
        assert "support+k3j9x@example.com" in part
        assert "Dana Scully" in part
        assert "— Example Support" in part
    assert 'keep "[CASE-12]" in the' in mail.text
    assert "Changing the severity" in mail.text


def test_acknowledgment_without_due_time_promises_no_time(renderer: Renderer) -> None:
    mail = renderer.render("acknowledgment", ack_context(due=None))

    assert "as soon as possible" in mail.text
    assert "Response target" not in mail.text


def test_acknowledgment_greets_without_name(renderer: Renderer) -> None:
    context = ack_context()
    context["recipient_name"] = ""

    mail = renderer.render("acknowledgment", context)

    assert mail.text.startswith("Hello,\n")


def test_acknowledgment_escapes_html_but_not_text(renderer: Renderer) -> None:
    mail = renderer.render("acknowledgment", ack_context(subject="<b>Tom & Jerry</b>"))

    assert "<b>Tom & Jerry</b>" in mail.text
    assert mail.html is not None
    assert "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;" in mail.html
    assert "<b>Tom" not in mail.html


@pytest.mark.parametrize(
    ("reason", "tags", "original", "subject_words", "explains"),
    [
        ("untagged", [], "Replication lag", "add a severity", "does not state a severity"),
        ("invalid_level", ["SEV-5"], "SEV-5 Disk full", "does not exist", '"SEV-5"'),
        (
            "ambiguous",
            ["[SEV-1]", "Priority: Low"],
            "[SEV-1] VPN down Priority: Low",
            "conflicting",
            '"[SEV-1]" and "Priority: Low"',
        ),
    ],
)
def test_rejection_explains_reason_and_lists_every_level(
    renderer: Renderer, reason: str, tags: list[str], original: str, subject_words: str, explains: str
) -> None:
    mail = renderer.render("rejection", rejection_context(reason, tags, original))

    assert mail.subject.startswith("Your request was not registered: ")
    assert subject_words in mail.subject
    assert explains in mail.text
    assert "support@example.com" in mail.text
    assert f'"{original}"' in mail.text
    for level in LEVELS:
        assert f"SEV-{level['level']}  {level['name']}" in mail.text
        assert str(level["description"]) in mail.text
        assert mail.html is not None and str(level["description"]) in mail.html
        for alias in level["aliases"]:  # type: ignore[attr-defined]
            assert f"[{alias}]" in mail.text


def test_rejection_examples_are_built_from_the_subject_without_the_bad_tags(renderer: Renderer) -> None:
    context = rejection_context("ambiguous", ["[SEV-1]", "Priority: Low"], "[SEV-1] VPN down Priority: Low")

    mail = renderer.render("rejection", context)

    assert "  [SEV-2] VPN down\n" in mail.text
    assert "  [High] VPN down\n" in mail.text
    assert "  Priority: High VPN down\n" in mail.text
    assert mail.html is not None and "<code>[SEV-2] VPN down</code>" in mail.html


def test_rejection_of_empty_subject_shows_placeholder_examples(renderer: Renderer) -> None:
    mail = renderer.render("rejection", rejection_context("untagged", [], ""))

    assert "[SEV-2] Short description of the problem" in mail.text


def test_rejection_ambiguous_names_tags_in_html(renderer: Renderer) -> None:
    mail = renderer.render("rejection", rejection_context("ambiguous", ["[P1]", "(low)"], "[P1] (low) x"))

    assert mail.html is not None
    assert "<code>[P1]</code> and <code>(low)</code>" in mail.html


def test_community_points_to_the_forum(renderer: Renderer) -> None:
    mail = renderer.render("community", COMMUNITY)

    assert "does not include email support" in mail.subject
    assert "How do I export reports?" in mail.subject
    assert "https://community.example.com/" in mail.text
    assert mail.html is not None and 'href="https://community.example.com/"' in mail.html
    assert "Hello Sam Lee," in mail.text


def test_quota_exceeded_tells_the_account_contact_how_to_proceed(renderer: Renderer) -> None:
    mail = renderer.render("quota_exceeded", QUOTA)

    assert mail.subject == "Support request from bob@acme.example on hold: Acme has used its incident quota"
    for fragment in ("Acme", "bob@acme.example", "[SEV-3] Export fails", "12 incidents", "01 Mar 2026", "on hold"):
        assert fragment in mail.text
    assert "How to proceed" in mail.text
    assert mail.text.startswith("Hello,\n")


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_template_has_text_and_html(renderer: Renderer, name: str) -> None:
    contexts: dict[str, Mapping[str, object]] = {
        "acknowledgment": ack_context(),
        "rejection": rejection_context("untagged", [], "x"),
        "community": COMMUNITY,
        "quota_exceeded": QUOTA,
    }

    mail = renderer.render(name, contexts[name])

    assert isinstance(mail, RenderedMail)
    assert mail.text.endswith("— Example Support\n")
    assert mail.html is not None and mail.html.rstrip().endswith("</html>")
    assert "\n\n\n" not in mail.text


def test_shipped_templates_pass_check(renderer: Renderer) -> None:
    assert renderer.check(SHIPPED) == []


def test_shipped_dir_is_the_project_templates_folder() -> None:
    assert shipped_templates_dir() == Path(__file__).resolve().parent.parent / "templates"


# -- strictness and errors ---------------------------------------------------------


def test_missing_variable_raises_template_error_naming_the_template(renderer: Renderer) -> None:
    context = ack_context()
    del context["service_name"]

    with pytest.raises(TemplateError, match="'acknowledgment'.*service_name"):
        renderer.render("acknowledgment", context)


def test_missing_mapping_key_raises(renderer: Renderer) -> None:
    context = ack_context()
    del context["ticket"]["reply_address"]  # type: ignore[attr-defined]

    with pytest.raises(TemplateError, match="acknowledgment"):
        renderer.render("acknowledgment", context)


def test_unknown_template_raises_template_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match="'no_such_mail'.*not found"):
        renderer.render("no_such_mail", {})


@pytest.mark.parametrize("name", ["../templates/acknowledgment", "_base", "a/b", ""])
def test_invalid_template_names_are_refused(renderer: Renderer, name: str) -> None:
    with pytest.raises(TemplateError, match="not a valid template name"):
        renderer.render(name, {})


def test_naive_due_time_is_a_template_error(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match="aware datetime"):
        renderer.render("acknowledgment", ack_context(due=datetime(2026, 11, 23, 16, 30)))


def test_syntax_error_names_template_and_line(tmp_path: Path) -> None:
    write(tmp_path, "broken/subject.txt", "ok\n")
    write(tmp_path, "broken/body.txt", "line one\n{{ oops \n")
    renderer = Renderer([tmp_path])

    with pytest.raises(TemplateError, match=r"'broken'.*line 2"):
        renderer.render("broken", {})


def test_empty_search_path_is_refused() -> None:
    with pytest.raises(ValueError):
        Renderer([])


# -- overrides -----------------------------------------------------------------------


def test_override_replaces_one_template_and_others_stay_shipped(tmp_path: Path) -> None:
    write(tmp_path, "community/subject.txt", "Please use our forum, {{ recipient_name }}\n")
    write(tmp_path, "community/body.txt", "Forum: {{ forum_url }}\n")
    renderer = Renderer([tmp_path, shipped_templates_dir()])

    community = renderer.render("community", COMMUNITY)
    ack = renderer.render("acknowledgment", ack_context())

    assert community == RenderedMail("Please use our forum, Sam Lee", "Forum: https://community.example.com/\n", None)
    assert ack.subject == "[CASE-12] Replication lag on db-2"
    assert ack.html is not None


def test_overriding_only_the_subject_keeps_shipped_bodies(tmp_path: Path) -> None:
    write(tmp_path, "acknowledgment/subject.txt", "Case {{ ticket.ref }} opened\n")
    renderer = Renderer([tmp_path, shipped_templates_dir()])

    mail = renderer.render("acknowledgment", ack_context())

    assert mail.subject == "Case CASE-12 opened"
    assert "SEV-2 (High)" in mail.text
    assert mail.html is not None and "SEV-2 (High)" in mail.html


def test_overriding_body_txt_alone_drops_the_stale_shipped_html(tmp_path: Path) -> None:
    write(tmp_path, "acknowledgment/body.txt", "{{ ticket.ref }} registered.\n")
    renderer = Renderer([tmp_path, shipped_templates_dir()])

    mail = renderer.render("acknowledgment", ack_context())

    assert mail.text == "CASE-12 registered.\n"
    assert mail.html is None
    assert renderer.check(["acknowledgment"]) == []


def test_orphan_html_override_is_not_paired_with_the_shipped_text(tmp_path: Path) -> None:
    write(tmp_path, "community/body.html", "<p>{{ forum_url }}</p>\n")
    renderer = Renderer([tmp_path, shipped_templates_dir()])

    mail = renderer.render("community", COMMUNITY)

    assert "https://community.example.com/" in mail.text
    assert mail.html is None


def test_override_of_base_changes_every_signature(tmp_path: Path) -> None:
    write(tmp_path, "_base/body.txt", "{% block content %}{% endblock %}-- {{ service_name }} team\n")
    renderer = Renderer([tmp_path, shipped_templates_dir()])

    mail = renderer.render("community", COMMUNITY)

    assert mail.text.endswith("-- Example Support team\n")
    assert "https://community.example.com/" in mail.text


def test_check_reports_problems_in_overrides(tmp_path: Path) -> None:
    write(tmp_path, "acknowledgment/body.txt", '{% extends "_base/missing.txt" %}\n')
    write(tmp_path, "community/body.html", "<p>orphan</p>\n")
    write(tmp_path, "rejection/subject.txt", "{% if reason %}\n")
    renderer = Renderer([tmp_path, shipped_templates_dir(), tmp_path / "absent"])

    problems = renderer.check([*SHIPPED, "no_such_template"])

    assert any(str(tmp_path / "absent") in p and "does not exist" in p for p in problems)
    assert any("'acknowledgment'" in p and "_base/missing.txt not found" in p for p in problems)
    assert any("'community'" in p and "body.html is ignored" in p for p in problems)
    assert any("'rejection'" in p and "subject.txt line" in p for p in problems)
    assert any("'no_such_template'" in p and "subject.txt not found" in p for p in problems)
    assert not any("quota_exceeded" in p for p in problems)


# -- subject collapsing and filters ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Plain subject", "Plain subject"),
        ("  padded \n", "padded"),
        ("two\r\nlines", "two lines"),
        ("tab\there\x00nul\x7fdel\x85nel\u2028sep", "tab here nul del nel sep"),
        ("x\r\nBcc: evil@example.net", "x Bcc: evil@example.net"),
    ],
)
def test_subject_is_collapsed_to_one_line(tmp_path: Path, raw: str, expected: str) -> None:
    write(tmp_path, "plain/subject.txt", "{{ value }}\n")
    write(tmp_path, "plain/body.txt", "body\n")

    mail = Renderer([tmp_path]).render("plain", {"value": raw})

    assert mail.subject == expected


def test_subject_is_capped_at_250_characters(tmp_path: Path) -> None:
    write(tmp_path, "plain/subject.txt", "{{ value }}\n")
    write(tmp_path, "plain/body.txt", "body\n")

    mail = Renderer([tmp_path]).render("plain", {"value": "word " * 100})

    assert len(mail.subject) == 250
    assert mail.subject.endswith("…")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2026, 11, 23, 16, 30, tzinfo=STOCKHOLM), "Mon 23 Nov 2026 16:30 CET"),
        (datetime(2026, 6, 5, 9, 5, tzinfo=STOCKHOLM), "Fri 05 Jun 2026 09:05 CEST"),
        (datetime(2026, 1, 1, 0, 0, tzinfo=UTC), "Thu 01 Jan 2026 00:00 UTC"),
        (datetime(2026, 1, 1, 8, 0, tzinfo=timezone(timedelta(hours=1))), "Thu 01 Jan 2026 08:00 UTC+01:00"),
    ],
)
def test_datetime_filter(value: datetime, expected: str) -> None:
    assert format_datetime(value) == expected


@pytest.mark.parametrize("value", [datetime(2026, 1, 1), date(2026, 1, 1), None, "2026-01-01"])
def test_datetime_filter_refuses_naive_and_non_datetimes(value: object) -> None:
    with pytest.raises(ValueError):
        format_datetime(value)  # type: ignore[arg-type]


def test_date_filter() -> None:
    assert format_date(date(2026, 3, 1)) == "01 Mar 2026"


@pytest.mark.parametrize(
    ("subject", "tags", "expected"),
    [
        ("[SEV-5] Disk full", ["SEV-5"], "Disk full"),
        ("[SEV-1] VPN down Priority: Low", ["[SEV-1]", "Priority: Low"], "VPN down"),
        ("High CPU [high]", ["[High]"], "High CPU"),
        ("Highway outage (high)", ["high"], "Highway outage"),
        ("Untouched", [], "Untouched"),
    ],
)
def test_without_tags(subject: str, tags: list[str], expected: str) -> None:
    assert without_tags(subject, tags) == expected


def test_warm_compiles_every_template_up_front_and_leaves_a_broken_one_to_its_render(tmp_path: Path) -> None:
    broken = tmp_path / "acknowledgment"
    broken.mkdir()
    (broken / "subject.txt").write_text("{% if %}")
    renderer = Renderer([tmp_path, shipped_templates_dir()])
    renderer.warm()
    cached = {template.name for template in renderer._env.cache.values()}   # the environment's compiled templates
    assert {"_base/body.html", "staff_notification/body.txt", "followup/subject.txt"} <= cached
    assert "acknowledgment/subject.txt" not in cached
    with pytest.raises(TemplateError, match="acknowledgment"):
        renderer.render("acknowledgment", {})
