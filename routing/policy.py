"""Who a sender is to the support policy: organizations, tiers and their entitlements."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal, Mapping

from routing.sla import Clock, Duration

UntaggedPolicy = str   # "reject" | "hold" | "default:N"
UnknownSenderPolicy = Literal["hold", "reject", "accept"]


@dataclass(frozen=True)
class Tier:
    name: str
    response: Mapping[int, Duration] = field(default_factory=dict)
    clock: Mapping[int, Clock] = field(default_factory=dict)
    calendar: str = "business"
    email_tickets: bool = True
    incidents_per_year: int | None = None
    forum_url: str = ""

    def clock_for(self, severity: int) -> Clock:
        """Business time unless the tier says otherwise for this severity."""
        return self.clock.get(severity, "business")


@dataclass(frozen=True)
class Organization:
    name: str
    domains: tuple[str, ...]
    tier: str
    contact: str | None = None
    contract_start: tuple[int, int] = (1, 1)   # month, day the contract year starts

    def contract_year_start(self, now: datetime) -> date:
        """The start of the contract year that `now` falls in."""
        month, day = self.contract_start
        start = date(now.year, month, day)
        return start if start <= now.date() else date(now.year - 1, month, day)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def domain_matches(domain: str, wanted: str) -> bool:
    """`wanted` or any of its subdomains."""
    wanted = wanted.lower().lstrip(".")
    return domain == wanted or domain.endswith("." + wanted)


def find_organization(address: str, organizations: tuple[Organization, ...]) -> Organization | None:
    """The organization owning the sender's domain; the most specific domain wins."""
    domain = domain_of(address)
    best: tuple[int, Organization] | None = None
    for org in organizations:
        for wanted in org.domains:
            if domain_matches(domain, wanted) and (best is None or len(wanted) > best[0]):
                best = (len(wanted), org)
    return best[1] if best else None
