"""Outgoing mail rendering: the project's only Jinja2 environment.

A notification is a folder under a search path: ``subject.txt``, ``body.txt`` and an
optional ``body.html``. Folders are searched in order (an administrator's override
folder first, then the shipped ``templates/``), so an administrator can replace one
file of one notification and keep the rest.

The two bodies are one pair: ``body.html`` is used only when it sits in the same folder
as the ``body.txt`` that was chosen. Otherwise an override of ``body.txt`` alone would go
out next to the shipped HTML, and mail clients (which show the HTML) would hide it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import jinja2
from jinja2 import meta

__all__ = [
    "RenderedMail",
    "Renderer",
    "TemplateError",
    "format_date",
    "format_datetime",
    "shipped_templates_dir",
    "without_tags",
]

SUBJECT_MAX_CHARS = 250

# Whitespace and control characters (C0, DEL, C1, Unicode line/paragraph separators).
_SUBJECT_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\Z")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class RenderedMail:
    """A rendered notification, ready for ``notifications.message.build_message``."""

    subject: str
    text: str
    html: str | None


class TemplateError(Exception):
    """A template is missing or failed to render; the message names the template."""


def shipped_templates_dir() -> Path:
    """The ``templates/`` folder shipped next to the packages."""
    return Path(__file__).resolve().parent.parent / "templates"


def format_datetime(value: datetime) -> str:
    """``Mon 23 Nov 2026 16:30 CET``; English names whatever the process locale is.

    Naive datetimes are refused: a due time without a zone would be read in the
    customer's own zone and be wrong by hours.
    """
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ValueError(f"the datetime filter needs an aware datetime, got {value!r}")
    zone = value.tzname() or value.strftime("%z")
    return (
        f"{_DAYS[value.weekday()]} {value.day:02d} {_MONTHS[value.month - 1]} "
        f"{value.year} {value.hour:02d}:{value.minute:02d} {zone}"
    )


def format_date(value: date) -> str:
    """``01 Mar 2026``, the date part of :func:`format_datetime`."""
    if not isinstance(value, date):
        raise ValueError(f"the date filter needs a date, got {value!r}")
    return f"{value.day:02d} {_MONTHS[value.month - 1]} {value.year}"


def without_tags(subject: str, tags: Iterable[str]) -> str:
    """The subject with the given tags removed, for building corrected examples.

    A rejected ``[SEV-5] Disk full`` must not be suggested back as ``[SEV-2] [SEV-5]
    Disk full``, which would be rejected again.
    """
    for tag in tags:
        if tag:
            pattern = rf"(?<!\w){re.escape(tag)}(?!\w)"
            subject = re.sub(pattern, " ", subject, flags=re.IGNORECASE)
    subject = re.sub(r"\[\s*\]|\(\s*\)", " ", subject)
    return " ".join(subject.split())


def one_line_subject(value: str) -> str:
    """Collapse line breaks and control characters, strip, cap at 250 characters."""
    line = _SUBJECT_BREAKS.sub(" ", value).strip()
    if len(line) > SUBJECT_MAX_CHARS:
        line = line[: SUBJECT_MAX_CHARS - 1].rstrip() + "…"
    return line


class Renderer:
    """Renders notification folders found along a search path."""

    def __init__(self, search_path: Sequence[Path]) -> None:
        """Build the one environment; compiled templates are cached across renders."""
        if not search_path:
            raise ValueError("the template search path is empty")
        self._search_path = tuple(Path(p) for p in search_path)
        self._loader = jinja2.FileSystemLoader(self._search_path, encoding="utf-8")
        self._env = jinja2.Environment(
            loader=self._loader,
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html",), default_for_string=False, default=False
            ),
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        self._env.filters.update(
            datetime=format_datetime, date=format_date, without_tags=without_tags
        )

    def render(self, name: str, context: Mapping[str, object]) -> RenderedMail:
        """Render ``<name>/subject.txt``, ``<name>/body.txt`` and a paired ``body.html``."""
        _check_name(name)
        subject = self._render_file(name, "subject.txt", context)
        text = self._render_file(name, "body.txt", context)
        html = None
        if self._html_is_paired(name):
            html = self._render_file(name, "body.html", context)
        return RenderedMail(subject=one_line_subject(subject), text=text, html=html)

    def warm(self) -> None:
        """Compile every template along the search path now (at start and reload), not inside the
        transaction of the first mail that needs it. One that does not compile is left for
        `intake config check` to report and for its render to raise."""
        for path in self._env.list_templates():
            try:
                self._env.get_template(path)
            except jinja2.TemplateError:
                pass

    def check(self, names: Iterable[str]) -> list[str]:
        """Problems loading each named template (for ``intake config check``).

        Compiles every part and everything it extends or includes. Variables cannot be
        checked without a context; a missing one still fails at render time.
        """
        problems = [
            f"template folder {root} does not exist"
            for root in self._search_path
            if not root.is_dir()
        ]
        for name in names:
            problems.extend(self._check_one(name))
        return problems

    def _render_file(self, name: str, part: str, context: Mapping[str, object]) -> str:
        path = f"{name}/{part}"
        try:
            return self._env.get_template(path).render(context)
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(
                f"template {name!r}: {exc.name} not found in {self._where()}"
            ) from exc
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"template {name!r}: {_describe_syntax(exc)}") from exc
        except Exception as exc:  # the boundary: any failure inside a template
            raise TemplateError(f"template {name!r}: {path}: {exc}") from exc

    def _html_is_paired(self, name: str) -> bool:
        """True when the first body.html found comes from the folder of the body.txt used."""
        owner = self._owner(f"{name}/body.txt")
        return owner is not None and owner == self._owner(f"{name}/body.html")

    def _owner(self, path: str) -> Path | None:
        """The first search folder that holds ``path``."""
        return next((root for root in self._search_path if (root / path).is_file()), None)

    def _check_one(self, name: str) -> list[str]:
        try:
            _check_name(name)
        except TemplateError as exc:
            return [str(exc)]
        parts = ["subject.txt", "body.txt"]
        if self._html_is_paired(name):
            parts.append("body.html")
        problems = [
            f"template {name!r}: {problem}"
            for part in parts
            for problem in self._check_file(f"{name}/{part}", set())
        ]
        orphan = self._orphan_html(name)
        if orphan is not None:
            problems.append(
                f"template {name!r}: {orphan} is ignored and the mail is sent as text only: "
                f"body.html is used only next to the body.txt that is chosen"
            )
        return problems

    def _orphan_html(self, name: str) -> Path | None:
        """A body.html that shadows the chosen body.txt's folder without a body.txt of its own.

        A shipped body.html left behind by an overridden body.txt is the documented
        way to get text-only mail, not a problem.
        """
        html_owner = self._owner(f"{name}/body.html")
        text_owner = self._owner(f"{name}/body.txt")
        if html_owner is None or html_owner == text_owner:
            return None
        rank = self._search_path.index
        if text_owner is not None and rank(text_owner) < rank(html_owner):
            return None
        return html_owner / name / "body.html"

    def _check_file(self, path: str, seen: set[str]) -> list[str]:
        """Compile ``path`` and, recursively, the templates it extends or includes."""
        if path in seen:
            return []
        seen.add(path)
        try:
            source, filename, _ = self._loader.get_source(self._env, path)
            tree = self._env.parse(source, path, filename)
        except jinja2.TemplateNotFound:
            return [f"{path} not found in {self._where()}"]
        except jinja2.TemplateSyntaxError as exc:
            return [_describe_syntax(exc)]
        problems: list[str] = []
        for parent in meta.find_referenced_templates(tree):
            if parent is not None:
                problems.extend(self._check_file(parent, seen))
        return problems

    def _where(self) -> str:
        return ", ".join(str(p) for p in self._search_path)


def _check_name(name: str) -> None:
    if not _TEMPLATE_NAME.match(name):
        raise TemplateError(f"template {name!r}: not a valid template name")


def _describe_syntax(exc: jinja2.TemplateSyntaxError) -> str:
    return f"{exc.filename or exc.name} line {exc.lineno}: {exc.message}"
