"""Text for display: readable text from mail HTML, and replies without quoted history.

``html_to_text`` is built on the stdlib ``html.parser`` (tolerant of broken
markup, no extra dependency). Scripts, styles and the title are dropped, block
elements start new lines, entities are unescaped by the parser, whitespace is
collapsed as a browser would (except inside ``<pre>``), and runs of blank lines
become one. ``<blockquote>`` content is prefixed with ``> `` so that quoted
history in HTML replies can be trimmed like plain-text quotes. Link targets are
kept after the link text, since "click here" alone is useless in a ticket.

``visible_text`` trims quoted history for display only (the raw mail keeps it):
trailing ``>`` quotes; a reply attribution ("On ... wrote:", "Den ... skrev ...:",
"Am ... schrieb ...:") followed only by quotes; and everything from an
"-----Original Message-----" separator or an Outlook "From: / Sent:" block on
(Outlook writes forwards the same way, so those are trimmed too). Forward
markers ("Forwarded message") are content and stay. Linear in the input.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIP = frozenset({"script", "style", "title", "template"})
_BLOCK = frozenset({
    "address", "article", "aside", "blockquote", "center", "dd", "div", "dl",
    "dt", "fieldset", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5",
    "h6", "header", "hr", "li", "main", "nav", "ol", "p", "pre", "section",
    "table", "tr", "ul",
})
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "blockquote", "ul", "ol"})
_SPACES = re.compile(r"\s+")


class _TextExtractor(HTMLParser):
    """Collects text lines as the parser streams through the markup."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self._line: list[str] = []
        self._skip = 0
        self._pre = 0
        self._quote = 0
        self._href: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif tag == "body":
            self._skip = 0  # an unclosed <title> or <style> must not hide the whole body
        elif tag == "br":
            self._break()
        elif tag in _BLOCK:
            self._break(blank=tag in _PARAGRAPH)
            self._quote += tag == "blockquote"
            self._pre += tag == "pre"
            if tag == "li":
                self._line.append("- ")
        elif tag in ("td", "th"):
            self._line.append(" ")
        elif tag == "a":
            self._href = dict(attrs).get("href")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br" or tag == "hr":
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            self._break(blank=tag in _PARAGRAPH)
            if tag == "blockquote":
                self._quote = max(0, self._quote - 1)
            elif tag == "pre":
                self._pre = max(0, self._pre - 1)
        elif tag == "a":
            self._append_link()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if not self._pre:
            self._line.append(_SPACES.sub(" ", data))
            return
        first, *rest = data.split("\n")
        self._line.append(first)
        for line in rest:
            self._break()
            self._line.append(line)

    def parse_marked_section(self, i: int, report: bool = True) -> int:
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:  # CPython asserts on unknown keywords like "<![foo["; skip the section
            end = self.rawdata.find(">", i)
            return -1 if end < 0 else end + 1

    def _append_link(self) -> None:
        href, self._href = self._href, None
        text = "".join(self._line)
        if href and href.startswith(("http:", "https:")) and href not in text:
            self._line.append(f" <{href}>")

    def _break(self, blank: bool = False) -> None:
        text = "".join(self._line)
        self._line = []
        text = text.rstrip() if self._pre else text.strip()
        prefix = "> " * min(self._quote, 8)  # bounded: deep nesting must not cost quadratic time
        if text or blank:
            self.lines.append((prefix + text).rstrip())
        if blank:
            self.lines.append(prefix.rstrip())


    def text(self) -> str:
        self.close()
        self._break()
        return _collapse_blank_lines(self.lines)


def html_to_text(html: str) -> str:
    """Convert an HTML document or fragment to readable text; never raises on bad markup."""
    parser = _TextExtractor()
    parser.feed(html)
    return parser.text()


def _collapse_blank_lines(lines: list[str]) -> str:
    """At most one blank line in a row (a bare ">" counts as blank), none at either end."""
    out: list[str] = []
    for line in lines:
        if line.strip(" >") or (out and out[-1].strip(" >")):
            out.append(line)
    while out and not out[-1].strip(" >"):
        out.pop()
    return "\n".join(out)


_ATTRIBUTION = re.compile(
    r"\s*(?:On\s.{0,300}\swrote|Den\s.{0,300}\sskrev(?:\s.{0,200})?"
    r"|Am\s.{0,300}\sschrieb(?:\s.{0,200})?)\s*:\s*$",
    re.I,
)
_ATTRIBUTION_START = re.compile(r"\s*(?:On|Den|Am)\s", re.I)
_SEPARATOR = re.compile(
    r"\s*-{2,}\s*(?:Original Message|Ursprüngliche Nachricht|Ursprungligt meddelande"
    r"|Originalmeddelande)\s*-{2,}\s*$",
    re.I,
)
_OUTLOOK_FROM = re.compile(r"\s*\*?(?:From|Från|Von)\*?\s*:", re.I)
_OUTLOOK_SENT = re.compile(r"\s*\*?(?:Sent|Skickat|Gesendet)\*?\s*:", re.I)
_UNDERSCORES = re.compile(r"\s*_{10,}\s*$")


def visible_text(body_text: str) -> str:
    """The body without quoted history; the whole body when trimming would leave nothing."""
    lines = body_text.replace("\r\n", "\n").split("\n")
    before_history = lines[: _history_start(lines, _quoted_tail_start(lines))]
    text = "\n".join(before_history[: _quoted_tail_start(before_history)]).strip("\n")
    return text if text.strip() else body_text.strip("\n")


def _is_quote(line: str) -> bool:
    return line.lstrip().startswith(">")


def _quoted_tail_start(lines: list[str]) -> int:
    """Where the trailing run of quoted and blank lines starts."""
    end = len(lines)
    while end and (_is_quote(lines[end - 1]) or not lines[end - 1].strip()):
        end -= 1
    return end


def _history_start(lines: list[str], quoted_tail: int) -> int:
    has_quotes = any(_is_quote(line) for line in lines[quoted_tail:])
    for i, line in enumerate(lines):
        if _SEPARATOR.match(line):
            return i
        if _OUTLOOK_FROM.match(line) and any(_OUTLOOK_SENT.match(x) for x in lines[i + 1 : i + 4]):
            return i - 1 if i and _UNDERSCORES.match(lines[i - 1]) else i
        span = _attribution_span(lines, i)
        if span and has_quotes and i + span >= quoted_tail:
            return i
    return len(lines)


def _attribution_span(lines: list[str], i: int) -> int:
    """1 or 2 (clients wrap long attribution lines); 0 if no attribution starts at lines[i]."""
    if not _ATTRIBUTION_START.match(lines[i]):
        return 0
    if _ATTRIBUTION.match(lines[i]):
        return 1
    if i + 1 < len(lines) and _ATTRIBUTION.match(f"{lines[i]} {lines[i + 1]}"):
        return 2
    return 0
