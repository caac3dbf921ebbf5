"""Which keys config.toml accepts, table by table, as the loader itself reads them.

There is no second list to keep in step: the loader records every key it asks a table for
(whether or not the file sets it), so loading a probe that holds one entry of every kind of
table (a mailbox with an `imap` table, a tier, a rule with a `match`, ...) yields the whole
schema. docs/configuration.md is checked against it by the tests.
"""
from __future__ import annotations

import re
from pathlib import Path

from intake.config import ConfigError, _Builder

_PROBE = {
    "mailboxes": [{"imap": {}}], "severity": {"levels": [{}]}, "staff": {"members": [{}]},
    "tiers": {"probe": {}}, "calendars": {"probe": {}}, "organizations": [{}],
    "routing": {"rules": [{"match": {}}], "default": {}},
}
_ENTRY = re.compile(r"(mailboxes|organizations|severity\.levels|staff\.members)\.\d+|routing\.rules\..+")
_NAMED = re.compile(r"(tiers|calendars)\..+")


def accepted_keys() -> dict[str, set[str]]:
    """Table -> keys, tables named as in the reference: `service`, `mailboxes`, `mailboxes.imap`,
    `tiers.NAME`, `routing.rules`, `routing.rules.match`, ..."""
    builder = _Builder(Path("probe.toml"), {key: value for key, value in _PROBE.items()})
    try:
        builder.build()
    except ConfigError:
        pass        # the probe leaves required keys out on purpose; only the keys asked for matter
    schema: dict[str, set[str]] = {}
    for table, key in builder.asked:
        table = _table(table)
        if "." in key:                      # `imap.host` of a mailbox, `match.severity` of a rule
            inner, key = key.split(".", 1)
            table = f"{table}.{inner}"
        schema.setdefault(table, set()).add(key)
    return schema


def _table(name: str) -> str:
    if entry := _ENTRY.fullmatch(name):
        return entry.group(1) or "routing.rules"
    if named := _NAMED.fullmatch(name):
        return f"{named.group(1)}.NAME"
    return name
