"""Personal data in kept text replaced by placeholders: e-mail addresses, IP addresses, phone numbers.

The patterns favour precision: an IPv4 address needs four octets of at most 255, an IPv6 one at
least three groups with a `::` or all eight, and a phone number a separator-shaped layout of 10
to 13 digits, grouped as a phone number is (so years, prices and version strings are left
alone).
"""

from __future__ import annotations

import ipaddress
import re

from solo.data.config import PIIConfig

EMAIL = "<EMAIL>"
IP = "<IP>"
PHONE = "<PHONE>"

_EMAIL = re.compile(r"\b[\w.%+-]+@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.]*\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,7}(?::|(?::[0-9A-Fa-f]{1,4}){1,7}|[0-9A-Fa-f]{1,4})(?![\w:])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}[\s.-]?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]\d{2,4}){1,3}"  # +44 20 7946 0958
    r"|(?:\(\d{3}\)\s?|\d{3}[.-])\d{3}[.-]\d{4}"  # (555) 123-4567, 555-123-4567, 415.555.2671
    r")(?![\w-]|\.\d)"
)


def _ipv6_or_keep(match: re.Match) -> str:
    try:
        ipaddress.IPv6Address(match.group())
    except ValueError:
        return match.group()  # a time like 10:30:00 or a MAC-like run, not an address
    return IP


def scrub(text: str, c: PIIConfig) -> tuple[str, dict[str, int]]:
    """The text with placeholders, and how many of each were put in."""
    counts = {"email": 0, "ip": 0, "phone": 0}
    if c.email and "@" in text:
        text, counts["email"] = _EMAIL.subn(EMAIL, text)
    if c.ip:
        text, counts["ip"] = _IPV4.subn(IP, text)
        if "::" in text or text.count(":") >= 7:
            before = text.count(IP)
            text = _IPV6.sub(_ipv6_or_keep, text)
            counts["ip"] += text.count(IP) - before
    if c.phone:
        before = text.count(PHONE)
        text = _PHONE.sub(_phone_or_keep, text)
        counts["phone"] = text.count(PHONE) - before
    return text, counts


def _phone_or_keep(match: re.Match) -> str:
    digits = sum(ch.isdigit() for ch in match.group())
    return PHONE if 9 <= digits <= 13 else match.group()
