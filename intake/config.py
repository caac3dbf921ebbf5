"""config.toml loaded once into frozen, validated objects.

Every problem is collected (not just the first) and named by file, section and key, so an
administrator fixes a config in one pass. Unknown keys are errors: a typo must not silently
fall back to a default. Nothing here touches the network or the database.
"""
from __future__ import annotations

import os
import re
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

from intake.config_lines import Locator
from intake.config_routing import policy_problem, read_routing
from intake.logs import LOG_FORMATS, LOG_LEVELS
from intake.parse import Limits
from routing.policy import Organization, Tier
from routing.rules import Actions, Rule
from routing.severity import SeverityLevel
from routing.sla import Calendar, Duration

T = TypeVar("T")
MAX_PROCESSING_PROCESSES = 16
DEFAULT_HOURS = {day: "09:00-17:00" for day in ("mon", "tue", "wed", "thu", "fri")}
_MISSING: Any = object()


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class ImapConfig:
    """Where the IMAP door fetches a mailbox's mail (docs/imap.md). The password is read from the
    environment when the poller connects, so a missing variable is the poller's logged, retried
    problem, not a reason to refuse the whole config."""
    host: str
    user: str
    password_env: str
    port: int = 993
    tls: bool = True
    folder: str = "INBOX"
    processed_folder: str | None = None     # None: processed mail stays in `folder`, flagged \Seen
    error_folder: str = "Errors"
    poll_seconds: float = 60                # when the server has no IDLE
    idle_seconds: float = 1500              # IDLE is re-issued this often (servers may drop it after 30 min)
    batch_size: int = 50
    max_fetch_failures: int = 3
    reconnect_min_seconds: float = 1
    reconnect_max_seconds: float = 300

    def password(self) -> str | None:
        return os.environ.get(self.password_env) or None


@dataclass(frozen=True)
class MailboxConfig:
    address: str
    on_untagged: str = "reject"
    on_unknown_sender: str = "hold"
    imap: ImapConfig | None = None


@dataclass(frozen=True)
class StaffMember:
    address: str
    name: str = ""
    queues: tuple[str, ...] = ()     # the queues whose mail this member is told about (none: all)


@dataclass(frozen=True)
class Config:
    path: Path
    case_prefix: str
    timezone: str
    service_name: str
    templates_dir: Path | None
    database_url: str
    smtp_host: str
    smtp_port: int
    max_message_bytes: int
    outbound_host: str
    outbound_port: int
    from_address: str
    reply_domain: str
    auto_replies_per_hour: int
    max_attachment_bytes: int
    max_attachments: int
    max_header_bytes: int
    max_headers: int
    max_mime_depth: int
    max_parts: int
    max_subject_chars: int
    mailboxes: tuple[MailboxConfig, ...]
    levels: tuple[SeverityLevel, ...]
    calendars: Mapping[str, Calendar]
    tiers: Mapping[str, Tier]
    organizations: tuple[Organization, ...]
    staff: tuple[StaffMember, ...]
    trusted_authserv_id: str
    followup_attempts: int
    followup_first_after: Duration
    followup_grace: Duration
    sev1_update_every: Duration
    reopen_window: Duration
    warn_at: float
    queues: tuple[str, ...]
    default_actions: Actions
    rules: tuple[Rule, ...]
    log_format: str = "text"
    log_level: str = "info"
    redact_addresses: bool = True
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464                # 0: no metrics and health endpoint
    processing_processes: int = 0           # 0: as suits the database (processing_lanes)
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)

    @property
    def processing_lanes(self) -> int:
        """Processes that process stored mail at once: SQLite lets one transaction write at a time,
        so one; on PostgreSQL two keep a 2-core machine busy while each waits for the database."""
        if self.processing_processes:
            return self.processing_processes
        return 1 if self.database_url.startswith("sqlite") else 2

    def mailbox(self, address: str) -> MailboxConfig:
        """The mailbox for an address (plus-tags ignored); the first mailbox when none is named."""
        local, _, domain = address.lower().partition("@")
        plain = f"{local.split('+', 1)[0]}@{domain}"
        for box in self.mailboxes:
            if box.address.lower() == plain:
                return box
        return self.mailboxes[0]

    def level_name(self, level: int) -> str:
        return next((lv.name for lv in self.levels if lv.level == level), str(level))

    @property
    def own_addresses(self) -> frozenset[str]:
        return frozenset({self.from_address.lower(), *(m.address.lower() for m in self.mailboxes)})

    @property
    def parse_limits(self) -> Limits:
        """What the parse stage refuses or cuts (the SMTP door refuses oversized mail itself, with 552)."""
        return Limits(self.max_message_bytes, self.max_header_bytes, self.max_headers, self.max_mime_depth,
                      self.max_parts, self.max_subject_chars)


def default_config_path() -> Path:
    return Path(os.environ.get("INTAKE_CONFIG", "config.toml"))


def load_config(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate `path`; `overrides` ({"database": {"url": ...}}) replace whole keys (tests, CLI)."""
    path = Path(path) if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError([f"{path}: file not found"]) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    return _Builder(path, data, Locator.of(text)).build()


def config_from(path: Path, data: Mapping[str, Any]) -> Config:
    """The Config of TOML read before (`Config.raw`): the processing process builds the door's."""
    return _Builder(path, dict(data)).build()


class _Section:
    """One table of the file: typed reads that record problems instead of raising.

    `prefix` names a nested table in messages (`match.` for a rule's match); `locate` finds the
    line of a key, where the file tells.
    """

    def __init__(self, builder: "_Builder", name: str, data: Any, prefix: str = "",
                 locate: Callable[[str | None], int | None] | None = None) -> None:
        self.b, self.name, self.prefix, self.locate = builder, name, prefix, locate
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}
        self.seen: set[str] = set()
        if not isinstance(data, dict):
            self.problem(None, f"expected a table, got {_kind(data)}")

    def problem(self, key: str | None, message: str) -> None:
        full = f"{self.prefix}{key}" if key else (self.prefix.rstrip(".") or None)
        self.b.problem(self.name, full, message, self.locate(full) if self.locate else None)

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: Any = _MISSING) -> Any:
        self.seen.add(key)
        self.b.asked.add((self.name, self.prefix + key))
        if key not in self.data:
            if default is _MISSING:
                self.problem(key, "is required")
                return None
            return default
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
            self.problem(key, f"expected {_kind_name(kind)}, got {_kind(value)}")
            return default if default is not _MISSING else None
        return value

    def convert(self, key: str, raw: Any, fn: Callable[[Any], T]) -> T | None:
        try:
            return fn(raw)
        except (ValueError, KeyError, TypeError, re.error, zoneinfo.ZoneInfoNotFoundError) as exc:
            self.problem(key, str(exc) or exc.__class__.__name__)
            return None

    def finish(self) -> None:
        for key in sorted(set(self.data) - self.seen):
            self.problem(key, "unknown key")


def _kind(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(value), type(value).__name__)


def _kind_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_kind(k()) if k is not type(None) else "nothing" for k in kinds)


class _Builder:
    def __init__(self, path: Path, data: dict[str, Any], locator: Locator | None = None) -> None:
        self.path, self.data = path, data
        self.locator = locator or Locator.of("")
        self.problems: list[str] = []
        self.asked: set[tuple[str, str]] = set()     # (table, key) of every key read: the schema

    def problem(self, section: str, key: str | None, message: str, line: int | None = None) -> None:
        where = f"[{section}]" + (f" {key}" if key else "")
        self.problems.append(f"{self.path}{f':{line}' if line else ''}: {where}: {message}")

    def table(self, name: str, data: Any, prefix: str = "",
              locate: Callable[[str | None], int | None] | None = None) -> _Section:
        """A table read the typed, problem-recording way (for the section readers in other modules)."""
        return _Section(self, name, data, prefix, locate)

    def section(self, name: str, required: bool = True) -> _Section:
        if name not in self.data and not required:
            return _Section(self, name, {})
        if name not in self.data:
            self.problem(name, None, "section is missing")
            return _Section(self, name, {})
        return _Section(self, name, self.data[name])

    def build(self) -> Config:
        known = {"service", "database", "smtp", "outbound", "limits", "metrics", "mailboxes", "severity",
                 "calendars", "tiers", "organizations", "staff", "followup", "sla", "routing"}
        for key in sorted(set(self.data) - known):
            self.problems.append(f"{self.path}: [{key}]: unknown section")
        parts = {**self._service(), **self._transport(), **self._policy(), **self._time()}
        parts.update(read_routing(self, parts))
        if self.problems:
            raise ConfigError(self.problems)
        return Config(path=self.path, raw=self.data, **parts)

    def _service(self) -> dict[str, Any]:
        s = self.section("service")
        prefix = s.get("case_prefix", str, "CASE")
        if prefix and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,15}", prefix):
            self.problem("service", "case_prefix", f"{prefix!r} must be letters, digits or _ (starting with a letter)")
        tz = s.get("timezone", str, "UTC")
        s.convert("timezone", tz, zoneinfo.ZoneInfo)
        templates = s.get("templates_dir", str, "")
        values = {"case_prefix": prefix, "timezone": tz, "service_name": s.get("name", str, "Support"),
                  "templates_dir": (self.path.parent / templates) if templates else None,
                  "log_format": s.get("log_format", str, "text"), "log_level": s.get("log_level", str, "info"),
                  "redact_addresses": s.get("redact_addresses", bool, True)}
        for key, allowed in (("log_format", LOG_FORMATS), ("log_level", LOG_LEVELS)):
            if values[key] not in allowed:
                self.problem("service", key, f"{values[key]!r}: expected {' or '.join(allowed)}")
        s.finish()
        values.update(self._metrics())
        db = self.section("database")
        values["database_url"] = db.get("url", str)
        values["processing_processes"] = db.get("processing_processes", int, 0)
        if not 0 <= values["processing_processes"] <= MAX_PROCESSING_PROCESSES:
            self.problem("database", "processing_processes", f"{values['processing_processes']}: expected 0 "
                         f"(as suits the database) to {MAX_PROCESSING_PROCESSES}")
        db.finish()
        return values

    def _metrics(self) -> dict[str, Any]:
        m = self.section("metrics", required=False)
        values = {"metrics_host": m.get("host", str, "127.0.0.1"), "metrics_port": m.get("port", int, 9464)}
        m.finish()
        if values["metrics_port"] is not None and not 0 <= values["metrics_port"] <= 65535:
            self.problem("metrics", "port", f"{values['metrics_port']} is out of range (0 = off, or 1 to 65535)")
        return values

    def _transport(self) -> dict[str, Any]:
        smtp, out = self.section("smtp"), self.section("outbound")
        limits = self.section("limits", required=False)
        values = {
            "smtp_host": smtp.get("host", str, "127.0.0.1"), "smtp_port": smtp.get("port", int, 2525),
            "max_message_bytes": smtp.get("max_message_bytes", int, 26214400),
            "outbound_host": out.get("host", str, "127.0.0.1"), "outbound_port": out.get("port", int, 25),
            "from_address": out.get("from_address", str), "reply_domain": out.get("reply_domain", str),
            "auto_replies_per_hour": limits.get("auto_replies_per_hour", int, 5),
            "max_attachment_bytes": limits.get("max_attachment_bytes", int, 10 * 1024 * 1024),
            "max_attachments": limits.get("max_attachments", int, 50),
            "max_header_bytes": limits.get("max_header_bytes", int, 256 * 1024),
            "max_headers": limits.get("max_headers", int, 1000),
            "max_mime_depth": limits.get("max_mime_depth", int, 30),
            "max_parts": limits.get("max_parts", int, 1000),
            "max_subject_chars": limits.get("max_subject_chars", int, 998),
        }
        for sec in (smtp, out, limits):
            sec.finish()
        for key, low, high in (("max_header_bytes", 1024, 2**31), ("max_headers", 10, 10**6),
                               ("max_mime_depth", 1, 100), ("max_parts", 1, 10**6), ("max_subject_chars", 50, 10**6)):
            if values[key] is not None and not low <= values[key] <= high:   # depth: the parser recurses per level
                self.problem("limits", key, f"{values[key]} is out of range ({low} to {high})")
        if values["from_address"] and "@" not in values["from_address"]:
            self.problem("outbound", "from_address", "must be an email address")
        values["mailboxes"] = self._mailboxes()
        return values

    def _mailboxes(self) -> tuple[MailboxConfig, ...]:
        raw = self.data.get("mailboxes")
        if not isinstance(raw, list) or not raw:
            self.problem("mailboxes", None, "at least one [[mailboxes]] entry is required")
            return ()
        boxes = []
        for i, entry in enumerate(raw):
            s = _Section(self, f"mailboxes.{i}", entry)
            address = s.get("address", str, "")
            on_untagged = s.get("on_untagged", str, "reject")
            on_unknown = s.get("on_unknown_sender", str, "hold")
            imap = s.get("imap", dict, None)
            s.finish()
            self._check_policy(s.name, on_untagged, on_unknown)
            boxes.append(MailboxConfig(address.lower(), on_untagged, on_unknown,
                                       self._imap(s.name, imap) if imap is not None else None))
        return tuple(boxes)

    def _imap(self, where: str, data: dict[str, Any]) -> ImapConfig:
        """A mailbox's `imap` table; problems name `[mailboxes.N] imap.KEY`."""
        s = _Section(self, where, {f"imap.{key}": value for key, value in data.items()})
        tls = s.get("imap.tls", bool, True)
        number = (int, float)
        imap = ImapConfig(
            host=s.get("imap.host", str), user=s.get("imap.user", str), password_env=s.get("imap.password_env", str),
            port=s.get("imap.port", int, 993 if tls else 143), tls=tls, folder=s.get("imap.folder", str, "INBOX"),
            processed_folder=s.get("imap.processed_folder", str, None),
            error_folder=s.get("imap.error_folder", str, "Errors"),
            poll_seconds=s.get("imap.poll_seconds", number, 60), idle_seconds=s.get("imap.idle_seconds", number, 1500),
            batch_size=s.get("imap.batch_size", int, 50), max_fetch_failures=s.get("imap.max_fetch_failures", int, 3),
            reconnect_min_seconds=s.get("imap.reconnect_min_seconds", number, 1),
            reconnect_max_seconds=s.get("imap.reconnect_max_seconds", number, 300))
        s.finish()
        if imap.password_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", imap.password_env):
            self.problem(where, "imap.password_env", f"{imap.password_env!r} is not an environment variable name")
        for key, low, high in (("port", 1, 65535), ("poll_seconds", 0.1, 86400), ("idle_seconds", 1, 1740),
                               ("batch_size", 1, 1000), ("max_fetch_failures", 1, 100),
                               ("reconnect_min_seconds", 0.1, 3600), ("reconnect_max_seconds", 0.1, 86400)):
            value = getattr(imap, key)
            if value is not None and not low <= value <= high:
                self.problem(where, f"imap.{key}", f"{value} is out of range ({low} to {high})")
        if imap.reconnect_max_seconds < imap.reconnect_min_seconds:
            self.problem(where, "imap.reconnect_max_seconds", "must not be less than reconnect_min_seconds")
        for key in ("processed_folder", "error_folder"):
            if getattr(imap, key) == imap.folder:
                self.problem(where, f"imap.{key}", f"must differ from folder ({imap.folder!r})")
        return imap

    def _check_policy(self, where: str, on_untagged: str | None, on_unknown: str | None) -> None:
        levels = {lv.get("level") for lv in self.data.get("severity", {}).get("levels", []) if isinstance(lv, dict)}
        for key, value in (("on_untagged", on_untagged), ("on_unknown_sender", on_unknown)):
            problem = None if value is None else policy_problem(key, value, levels)
            if problem:
                self.problem(where, key, problem)

    def _policy(self) -> dict[str, Any]:
        sev = self.section("severity")
        levels = []
        for i, entry in enumerate(sev.get("levels", list, [])):
            s = _Section(self, f"severity.levels.{i}", entry)
            lv = SeverityLevel(s.get("level", int, 0), s.get("name", str, ""),
                               tuple(s.get("aliases", list, [])), s.get("description", str, ""))
            s.finish()
            levels.append(lv)
        sev.finish()
        if not levels:
            self.problem("severity", "levels", "at least one level is required")
        staff = self.section("staff", required=False)
        members = []
        for i, entry in enumerate(staff.get("members", list, [])):
            s = _Section(self, f"staff.members.{i}", entry)
            members.append(StaffMember(s.get("address", str, "").lower(), s.get("name", str, ""),
                                       tuple(s.get("queues", list, []))))
            s.finish()
        values = {"levels": tuple(sorted(levels, key=lambda lv: lv.level)), "staff": tuple(members),
                  "trusted_authserv_id": staff.get("trusted_authserv_id", str, "")}
        staff.finish()
        values["tiers"] = self._tiers({lv.level for lv in levels})
        values["organizations"] = self._organizations(set(values["tiers"]))
        return values

    def _tiers(self, levels: set[int]) -> dict[str, Tier]:
        tiers = {}
        for name, entry in self.section("tiers").data.items():
            s = _Section(self, f"tiers.{name}", entry)
            response = {}
            for key, text in s.get("response", dict, {}).items():
                level = s.convert("response", key, int)
                if level not in levels:
                    self.problem(s.name, "response", f"{key!r} is not a configured severity level")
                response[level] = s.convert("response", text, Duration.parse)
            clock = {}
            for key, value in s.get("clock", dict, {}).items():
                level = s.convert("clock", key, int)
                if level not in levels:
                    self.problem(s.name, "clock", f"{key!r} is not a configured severity level")
                if value not in ("24x7", "business"):
                    self.problem(s.name, "clock", f"{key} = {value!r}: expected \"24x7\" or \"business\"")
                clock[level] = value
            tiers[name] = Tier(name, response, clock,
                               s.get("calendar", str, "business"), s.get("email_tickets", bool, True),
                               s.get("incidents_per_year", int, None), s.get("forum_url", str, ""))
            s.finish()
        return tiers

    def _organizations(self, tiers: set[str]) -> tuple[Organization, ...]:
        orgs = []
        for i, entry in enumerate(self.data.get("organizations", [])):
            s = _Section(self, f"organizations.{i}", entry)
            tier = s.get("tier", str, "")
            if tier not in tiers:
                self.problem(s.name, "tier", f"{tier!r} is not a tier in [tiers]")
            start = s.get("contract_start", str, "01-01")
            month_day = s.convert("contract_start", start, _month_day)
            orgs.append(Organization(s.get("name", str, ""), tuple(d.lower() for d in s.get("domains", list, [])),
                                     tier, s.get("contact", str, None), month_day or (1, 1)))
            s.finish()
        return tuple(orgs)

    def _time(self) -> dict[str, Any]:
        calendars = {}
        for name, entry in self.section("calendars").data.items():
            s = _Section(self, f"calendars.{name}", entry)
            args = (s.get("timezone", str, "UTC"), s.get("hours", dict, DEFAULT_HOURS),
                    s.get("holidays", str, None), s.get("extra_closed", list, []))
            calendar = s.convert("hours", args, lambda a: Calendar.from_config(*a))
            s.finish()
            if calendar is not None:
                calendars[name] = calendar
        for tier in self.data.get("tiers", {}):
            wanted = self.data["tiers"][tier].get("calendar", "business") if isinstance(self.data["tiers"][tier], dict) else None
            if wanted and wanted not in calendars:
                self.problem(f"tiers.{tier}", "calendar", f"{wanted!r} is not a calendar in [calendars]")
        f = self.section("followup")
        values = {"followup_attempts": f.get("attempts", int, 2)}
        if values["followup_attempts"] is not None and not 0 <= values["followup_attempts"] <= 10:
            f.problem("attempts", "must be between 0 and 10")
        for key, default in (("first_after", "1bd"), ("grace", "1bd"), ("sev1_update_every", "4h"), ("reopen_window", "14d")):
            values[key if key.startswith(("sev1", "reopen")) else f"followup_{key}"] = (
                f.convert(key, f.get(key, str, default), Duration.parse) or Duration.parse(default))
        f.finish()
        sla = self.section("sla", required=False)
        values["warn_at"] = float(sla.get("warn_at", (int, float), 0.75))
        if not 0 < values["warn_at"] <= 1:
            sla.problem("warn_at", "must be a share of the target: more than 0, at most 1")
        sla.finish()
        return {"calendars": calendars, **values}


def _month_day(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d{2})-(\d{2})", text)
    if not m or not (1 <= int(m.group(1)) <= 12 and 1 <= int(m.group(2)) <= 28):
        raise ValueError(f"{text!r}: expected MM-DD (day 01-28)")
    return int(m.group(1)), int(m.group(2))
