"""Line numbers for config errors. tomllib reports none, so they are found in the text.

A table is the lines from its header to the next header (for an array element: to the next
header that is not one of its sub-tables, such as `[routing.rules.match]`); a key is the first
line in it that sets the key. Rules are the `[[routing.rules]]` tables in order or, when
written inline, found by their `name = "..."` line. A multi-line string holding such text can
mislead it; the message then points at a nearby line, never at another rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\[\]]+?)\s*\]\]?\s*(?:#.*)?$")


@dataclass(frozen=True)
class _Table:
    name: str
    array: bool        # [[name]]
    start: int         # index of the header line
    end: int           # index after the last line


@dataclass(frozen=True)
class Locator:
    lines: tuple[str, ...]
    tables: tuple[_Table, ...]

    @classmethod
    def of(cls, text: str) -> Locator:
        lines = tuple(text.splitlines())
        heads = [(i, m.group(1) == "[[", _bare(m.group(2))) for i, line in enumerate(lines)
                 if (m := _HEADER.match(line))]
        tables = []
        for n, (start, array, name) in enumerate(heads):
            end = next((s for s, sub_array, other in heads[n + 1:]
                        if not (array and not sub_array and other.startswith(name + "."))), len(lines))
            tables.append(_Table(name, array, start, end))
        return cls(lines, tuple(tables))

    def table(self, name: str, key: str | None = None) -> int | None:
        """The 1-based line of `key` in `[name]` (dotted keys: its last part), else of the header."""
        found = next((t for t in self.tables if t.name == name and not t.array), None)
        return None if found is None else self._in(found.start, found.end, key)

    def rule(self, index: int, name: str | None, key: str | None = None) -> int | None:
        """The 1-based line of `key` in rule number `index` (0-based), else of the rule itself."""
        rules = [t for t in self.tables if t.array and t.name == "routing.rules"]
        if index < len(rules):
            return self._in(rules[index].start, rules[index].end, key)
        if name is None:
            return None
        wanted = re.compile(rf"""(?<![\w-])name\s*=\s*["']{re.escape(name)}["']""")
        return next((i + 1 for i, line in enumerate(self.lines) if wanted.search(line)), None)

    def _in(self, start: int, end: int, key: str | None) -> int:
        for part in reversed(key.split(".") if key else []):
            wanted = re.compile(rf"""(?:^|[{{,\s])["']?{re.escape(part)}["']?\s*=""")
            for i in range(start, end):
                if wanted.search(self.lines[i]):
                    return i + 1
        return start + 1


def _bare(name: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in name.split("."))
