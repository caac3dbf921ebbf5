"""Is a staff sender who they claim to be? Read from the trusted receiving host's
Authentication-Results header (RFC 8601).

Only the topmost Authentication-Results header counts, and only when its authserv-id is the
configured trusted host: the receiving host prepends its own, so anything below it (or a
header claiming another host) came with the mail and proves nothing. A pass counts only when
it is aligned with the From domain: DKIM `header.d` (or `header.i`) or SPF `smtp.mailfrom`
in the From domain or a parent of it.
"""
from __future__ import annotations

import re

from routing.policy import domain_matches

_RESULT = re.compile(r"\b(dkim|spf)\s*=\s*(\w+)([^;]*)", re.IGNORECASE)
_PROPERTY = re.compile(r"\b(header\.d|header\.i|smtp\.mailfrom|smtp\.helo)\s*=\s*\"?([^\s;\"]+)", re.IGNORECASE)


def authentication_passes(results_headers: tuple[str, ...], from_domain: str, trusted_authserv_id: str) -> bool:
    """True when the trusted host saw an aligned DKIM or SPF pass for `from_domain`."""
    if not results_headers or not trusted_authserv_id or not from_domain:
        return False
    top = _strip_comments(results_headers[0])
    authserv_id, _, results = top.partition(";")
    if authserv_id.strip().lower().split()[0:1] != [trusted_authserv_id.lower()]:
        return False
    for method, verdict, props in _RESULT.findall(results):
        if verdict.lower() != "pass":
            continue
        for name, value in _PROPERTY.findall(props):
            domain = value.rpartition("@")[2].lower().rstrip(".")
            if (method.lower(), name.lower()) in _ALIGNED and domain and domain_matches(from_domain, domain):
                return True
    return False


_ALIGNED = {("dkim", "header.d"), ("dkim", "header.i"), ("spf", "smtp.mailfrom")}


def _strip_comments(value: str) -> str:
    """Drop RFC 5322 comments (non-nested parentheses are enough for these headers)."""
    return re.sub(r"\([^()]*\)", " ", value)
