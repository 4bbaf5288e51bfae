"""PII: find personal data and replace it with typed placeholders (data cleaning and serving).

    text, counts = PIIRedactor(["email", "cn_id"]).redact(text)   # counts: Counter({"email": 2})

Detectors run in priority order: email, ip, cn_id, card, ssn, cn_mobile, phone. The first five
are strict: a match must also pass its check (ipaddress parsing; PRC ID birth date and ISO 7064
MOD 11-2 check digit; card issuer prefix, length and Luhn; SSN area/group/serial rules). A
number that has a strict detector's shape but fails its check is left as it is AND reserved:
the looser phone patterns may not redact it or a piece of it. A span already redacted is never
matched again. Every numeric pattern refuses to start or end inside a longer run of digits.
`find(text, start)` scans from `start` with the text before it as context (a streamed reply
is scanned from its settled point), and `horizon()` tracks how much of a growing text is
settled for these detectors (lmforge.text.settle).

Phones: mainland-China mobiles (1[3-9] + 9 digits, optional +86, separators 3-4-4); numbers
written internationally with "+" and 8-15 digits; North-American numbers with separators
((415) 555-2671, 415-555-2671). Other national formats without "+" are too ambiguous to tell
from ordinary numbers and are left alone.
IPs: loopback, unspecified, link-local, multicast and reserved addresses are not personal and
stay (127.0.0.1, ::1, 0.0.0.0), and so do four single digits (3.1.1.6 is a version number far
more often than an address); private and public addresses are redacted.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from lmforge.text.settle import Earliest, PatternHorizon

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "ip": "[IP]",
    "cn_id": "[CN_ID]",
    "card": "[CARD]",
    "ssn": "[SSN]",
    "cn_mobile": "[PHONE]",
    "phone": "[PHONE]",
}
KINDS = tuple(PLACEHOLDERS)  # priority order
STRICT_KINDS = frozenset({"email", "ip", "cn_id", "card", "ssn"})

# Boundaries are ASCII letters, digits and "_" (plus the characters named per pattern), not \w:
# Chinese writes numbers right against Han characters ("手机13800138000"), which \w would refuse.
# E-mail: RFC 5321 lengths (local part <= 64, DNS labels <= 63) and at most ten labels, so
# every pattern has a longest match and a streamed reply never holds back more than that.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL_RE = re.compile(
    rf"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{{1,64}}@{_LABEL}(?:\.{_LABEL}){{0,8}}"
    r"\.[A-Za-z]{2,63}(?![A-Za-z0-9_-])"
)
_IPV4_RE = re.compile(r"(?<![\dA-Za-z_.])(?:\d{1,3}\.){3}\d{1,3}(?![\dA-Za-z_]|\.\d)")
_IPV6_RE = re.compile(
    r"(?<![\dA-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?"
    r"(?![\dA-Za-z_:]|\.\d)"
)
_CN_ID_RE = re.compile(r"(?<![\dA-Za-z_+])\d{17}[\dXx](?![\dA-Za-z_])")
_CARD_RE = re.compile(
    r"(?<![\dA-Za-z_+.-])(?:"
    r"\d{13,19}"
    r"|\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{3})?"
    r"|\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5}"
    r")(?![\dA-Za-z_]|[ -]\d|\.\d)"
)
_SSN_RE = re.compile(r"(?<![\dA-Za-z_-])\d{3}-\d{2}-\d{4}(?![\dA-Za-z_-])")
_CN_MOBILE_RE = re.compile(
    r"(?<![\dA-Za-z_+])(?:\+86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?![\dA-Za-z_-]|\.\d)"
)
_PHONE_RE = re.compile(
    r"(?:(?<![\dA-Za-z_+])\+[1-9]\d{0,2}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,6}"
    r"|(?<![\dA-Za-z_+.-])(?:1[ .-])?"
    r"(?:\([2-9]\d{2}\) ?[2-9]\d{2}[.-]\d{4}|[2-9]\d{2}(?P<n>[.-])[2-9]\d{2}(?P=n)\d{4})"
    r")(?![\dA-Za-z_-]|\.\d)"
)
# Cheap gates: a document without a gate's match cannot hold that detector's PII, so the
# (slower) detector never scans it. Every numeric kind has 7+ digits with at most two
# separator characters between neighbours ("(415) 555-2671", "4111 1111 1111 1111").
_NUMBER_GATE = re.compile(r"\d(?:[ ().+-]{0,2}\d){6}")
_EMAIL_GATE = re.compile("@")
_IPV4_GATE = re.compile(r"\.\d{1,3}\.")
_IPV6_GATE = re.compile(r":[0-9A-Fa-f]{0,4}:")
_CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_ID_CHECK = "10X98765432"


@dataclass(frozen=True, slots=True)
class PIIMatch:
    start: int
    end: int
    kind: str


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def is_valid_ip(text: str) -> bool:
    """A parseable address that can point at a person's machine (not loopback and the like).
    Four single digits (3.1.1.6, 2.7.2.2) read as a version number, not an address."""
    if len(text) == 7 and text.count(".") == 3:
        return False
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast
                or ip.is_reserved)  # fmt: skip


def is_valid_cn_id(text: str) -> bool:
    """18-character PRC resident ID: a real birth date (1900..today) and the MOD 11-2 check."""
    if len(text) != 18 or not text[:17].isdigit():
        return False
    try:
        born = datetime.date(int(text[6:10]), int(text[10:12]), int(text[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= datetime.date.today():
        return False
    total = sum(int(d) * w for d, w in zip(text[:17], _CN_ID_WEIGHTS, strict=True))
    return _CN_ID_CHECK[total % 11] == text[17].upper()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_issuer_ok(digits: str) -> bool:
    """Issuer prefix and length of the major schemes; rules out most long numbers that pass
    Luhn by chance. 4: Visa; 2221-2720: Mastercard; 5x, 6x: Mastercard, Maestro, Discover,
    UnionPay; 34/37: Amex; 30/36/38/39, 3528-3589: Diners, JCB."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    if digits[0] == "4":
        return n in (13, 16, 19)
    if digits[0] in "56":
        return True
    if 2221 <= four <= 2720:
        return n == 16
    if two in (34, 37):
        return n == 15
    return (two in (30, 36, 38, 39) or 3528 <= four <= 3589) and n >= 14


def is_valid_card(text: str) -> bool:
    digits = _digits(text)
    return 13 <= len(digits) <= 19 and _card_issuer_ok(digits) and luhn_ok(digits)


def is_valid_ssn(text: str) -> bool:
    """US SSN rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    area, group, serial = text.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def is_valid_phone(text: str) -> bool:
    """E.164 allows at most 15 digits; fewer than 8 is a short code or an ordinary number."""
    return 8 <= len(_digits(text)) <= 15


def _always(_: str) -> bool:
    return True


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]
    is_valid: Callable[[str], bool]
    gate: re.Pattern[str]


_DETECTORS = {
    "email": (_Detector("email", _EMAIL_RE, _always, _EMAIL_GATE),),
    "ip": (  # IPv6 first: it may embed an IPv4 address (::ffff:10.0.0.1)
        _Detector("ip", _IPV6_RE, is_valid_ip, _IPV6_GATE),
        _Detector("ip", _IPV4_RE, is_valid_ip, _IPV4_GATE),
    ),
    "cn_id": (_Detector("cn_id", _CN_ID_RE, is_valid_cn_id, _NUMBER_GATE),),
    "card": (_Detector("card", _CARD_RE, is_valid_card, _NUMBER_GATE),),
    "ssn": (_Detector("ssn", _SSN_RE, is_valid_ssn, _NUMBER_GATE),),
    "cn_mobile": (_Detector("cn_mobile", _CN_MOBILE_RE, _always, _NUMBER_GATE),),
    "phone": (_Detector("phone", _PHONE_RE, is_valid_phone, _NUMBER_GATE),),
}
_FREE, _RESERVED, _TAKEN = 0, 1, 2


class PIIRedactor:
    """Find and redact personal data of the given kinds (default: all)."""

    def __init__(self, kinds: Iterable[str] = KINDS) -> None:
        wanted = set(kinds)
        unknown = wanted - set(KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds {sorted(unknown)}; choose from {list(KINDS)}")
        self.detectors = [d for kind in KINDS if kind in wanted for d in _DETECTORS[kind]]

    def find(self, text: str, start: int = 0) -> list[PIIMatch]:
        """Non-overlapping matches at or after `start`, in text order."""
        return self.scan(text, start)[0]

    def scan(self, text: str, start: int = 0) -> tuple[list[PIIMatch], list[tuple[int, int]]]:
        """The matches, and every candidate span any detector considered (valid or not: a
        reserved number decides what the looser detectors may take)."""
        gates: dict[re.Pattern[str], bool] = {}
        state: bytearray | None = None
        matches: list[PIIMatch] = []
        candidates: list[tuple[int, int]] = []
        for detector in self.detectors:
            if detector.gate not in gates:
                gates[detector.gate] = detector.gate.search(text, start) is not None
            if not gates[detector.gate]:
                continue
            for begin, end, valid in self._candidates(detector, text, start):
                candidates.append((begin, end))
                if state is None:
                    state = bytearray(len(text))
                span = state[begin:end]
                strict = detector.kind in STRICT_KINDS
                if _TAKEN in span or (not strict and _RESERVED in span):
                    continue
                if valid:
                    state[begin:end] = bytes([_TAKEN]) * (end - begin)
                    matches.append(PIIMatch(begin, end, detector.kind))
                else:
                    state[begin:end] = bytes([_RESERVED]) * (end - begin)
        return sorted(matches, key=lambda m: m.start), candidates

    @staticmethod
    def _candidates(detector: _Detector, text: str,
                    start: int) -> Iterator[tuple[int, int, bool]]:
        for match in detector.pattern.finditer(text, start):
            yield match.start(), match.end(), detector.is_valid(match.group())

    def horizon(self) -> Earliest:
        """A tracker of the settled prefix of a growing text for these detectors."""
        return Earliest([PatternHorizon(d.pattern) for d in self.detectors])

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        """Text with every match replaced by its placeholder, and the count of each kind."""
        counts: Counter[str] = Counter()
        matches = self.find(text)
        if not matches:
            return text, counts
        pieces = []
        position = 0
        for match in matches:
            pieces.append(text[position : match.start])
            pieces.append(PLACEHOLDERS[match.kind])
            counts[match.kind] += 1
            position = match.end
        pieces.append(text[position:])
        return "".join(pieces), counts
