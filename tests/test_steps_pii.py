"""pii: typed placeholders; checksums decide; ordinary numbers stay."""

import pydoc_data.topics
from collections import Counter

import pytest

from lmforge.data.config import PIIConfig
from lmforge.data.document import Doc
from lmforge.data.steps.pii import PII, PIIRedactor

REDACTOR = PIIRedactor()


def redact(text: str) -> str:
    return REDACTOR.redact(text)[0]


def cn_id(first17: str) -> str:
    """Complete a PRC resident ID with its ISO 7064 MOD 11-2 check character."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(first17, weights, strict=True))
    return first17 + "10X98765432"[total % 11]


def luhn_complete(body: str) -> str:
    """Append the Luhn check digit."""
    total = 0
    for i, char in enumerate(reversed(body)):
        d = int(char)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def wrong_last(number: str) -> str:
    last = number[-1]
    return number[:-1] + ("1" if last in "0X" else "0")


VALID_ID = cn_id("11010519491231002")
VALID_ID_X = next(cn_id(f"44030419900307{n:03d}") for n in range(1000)
                  if cn_id(f"44030419900307{n:03d}").endswith("X"))  # fmt: skip
VISA = luhn_complete("411111111111111")
MASTERCARD = luhn_complete("545454545454545")
AMEX = luhn_complete("37828224631000")
UNIONPAY = luhn_complete("621700000000000000")  # 19 digits


def test_constructed_numbers_are_what_the_test_thinks():
    assert VISA == "4111111111111111"
    assert AMEX == "378282246310005"
    assert VALID_ID_X.endswith("X") and len(VALID_ID) == 18


def test_email():
    text = "Write to john.doe+news@example.co.uk or ADMIN@mail.example.com, not to user@localhost."
    out, counts = REDACTOR.redact(text)
    assert out == "Write to [EMAIL] or [EMAIL], not to user@localhost."
    assert counts == {"email": 2}


def test_prc_id_valid_and_checksum_invalid():
    text = f"身份证号：{VALID_ID}，旧号{VALID_ID_X.lower()}；错误：{wrong_last(VALID_ID)}。"
    out, counts = REDACTOR.redact(text)
    assert out == f"身份证号：[CN_ID]，旧号[CN_ID]；错误：{wrong_last(VALID_ID)}。"
    assert counts == {"cn_id": 2}


def test_prc_id_with_impossible_birth_date_is_not_redacted():
    feb_30 = cn_id("11010519490230002")
    future = cn_id("11010529990101002")
    assert redact(f"ID {feb_30} and {future}") == f"ID {feb_30} and {future}"


def test_cards_valid_with_separators_and_luhn_invalid():
    grouped = " ".join(VISA[i : i + 4] for i in range(0, 16, 4))
    dashed = "-".join(MASTERCARD[i : i + 4] for i in range(0, 16, 4))
    amex = f"{AMEX[:4]} {AMEX[4:10]} {AMEX[10:]}"
    text = f"Cards: {grouped}, {dashed}, {amex}, {UNIONPAY}; bad {wrong_last(VISA)}."
    out, counts = REDACTOR.redact(text)
    assert out == f"Cards: [CARD], [CARD], [CARD], [CARD]; bad {wrong_last(VISA)}."
    assert counts == {"card": 4}


def test_luhn_passing_number_without_a_card_issuer_prefix_is_not_a_card():
    not_issuer = luhn_complete("100000000000000")  # no scheme starts with 1
    assert redact(f"order {not_issuer}") == f"order {not_issuer}"


def test_invalid_numbers_are_not_taken_by_looser_patterns():
    bad_card = wrong_last(VISA)
    bad_grouped = " ".join(bad_card[i : i + 4] for i in range(0, 16, 4))
    bad_id = wrong_last(VALID_ID)
    text = f"{bad_grouped} / {bad_id} / 666-12-3456"
    out, counts = REDACTOR.redact(text)
    assert out == text and not counts


def test_ssn():
    text = (
        "SSN 123-45-6789; invalid: 000-12-3456, 666-12-3456, 900-12-3456, 123-00-4567, 123-45-0000."
    )
    out, counts = REDACTOR.redact(text)
    assert out == text.replace("123-45-6789", "[SSN]")
    assert counts == {"ssn": 1}


def test_china_mobile_numbers():
    text = "手机13800138000，或 +86 139 1234 5678，或 +86-15012345678，办公 138-0013-8000。"
    out, counts = REDACTOR.redact(text)
    assert out == "手机[PHONE]，或 [PHONE]，或 [PHONE]，办公 [PHONE]。"
    assert counts == {"cn_mobile": 4}
    assert redact("号码 12800138000 不是手机") == "号码 12800138000 不是手机"  # 12x: no carrier


def test_international_and_north_american_phones():
    text = (
        "Call +1 415 555 2671, +44 20 7183 8750, +49 30 12345678, +33 1 42 68 53 00, "
        "(415) 555-2671 or 415-555-2671."
    )
    out, counts = REDACTOR.redact(text)
    assert out == "Call [PHONE], [PHONE], [PHONE], [PHONE], [PHONE] or [PHONE]."
    assert counts == {"phone": 6}


def test_ip_addresses():
    text = (
        "Hosts 81.2.69.142, 192.168.1.20 and 2001:db8::ff00:42:8329 and ::ffff:10.0.0.1; "
        "local 127.0.0.1, ::1, 0.0.0.0; bogus 999.1.1.1 and 1.2.3 and 12:30:45."
    )
    out, counts = REDACTOR.redact(text)
    assert out == (
        "Hosts [IP], [IP] and [IP] and [IP]; "
        "local 127.0.0.1, ::1, 0.0.0.0; bogus 999.1.1.1 and 1.2.3 and 12:30:45."
    )
    assert counts == {"ip": 4}


@pytest.mark.parametrize(
    "text",
    [
        "Released on 2024-01-15 (15/01/2024, 15.01.2024) at 10:30:45.",
        "It costs $1,234.56, ¥3,999.00 or €12.50; pay 1234567 points.",
        "Python 3.12.1, v1.2.3, numpy 2.4.6, build 20240115.1, pi is 3.14159265358979.",
        "Old releases: 3.1.1.6 and 2.7.2.2 (four-part version numbers).",
        "Population 1,402,112,000 and 100000000 and 512 256 1024 and 0x7fffffff.",
        "Slices x[1::2], std::vector, a MAC 00:1a:2b:3c:4d:5e, ISBN 978-3-16-148410-0.",
        "Phone-like but not: +0 1234 5678, 555-1234, 1234-5678-9012.",
    ],
)
def test_ordinary_numbers_are_not_redacted(text):
    out, counts = REDACTOR.redact(text)
    assert out == text and not counts


def test_real_english_documentation_is_untouched():
    for topic in ("formatstrings", "numbers", "floating", "integers", "types"):
        text = pydoc_data.topics.topics[topic]
        assert REDACTOR.find(text) == []


def test_kinds_restrict_what_is_redacted():
    text = f"mail a@b.com, id {VALID_ID}, phone 13800138000"
    only_email = PIIRedactor(["email"])
    assert only_email.redact(text) == (f"mail [EMAIL], id {VALID_ID}, phone 13800138000",
                                       Counter({"email": 1}))  # fmt: skip
    with pytest.raises(ValueError, match="unknown PII kinds"):
        PIIRedactor(["passport"])


def test_step_counts_by_type_and_modified_docs():
    docs = [
        Doc("a", f"Mail a@b.com or c@d.org, card {VISA}.", "s", "l"),
        Doc("b", "Nothing personal here.", "s", "l"),
        Doc("c", "手机13800138000。", "s", "l"),
    ]
    result = PII(PIIConfig()).process(docs)
    assert len(result.kept) == 3 and not result.dropped
    assert result.modified == 2
    assert result.counters == {"email": 2, "card": 1, "cn_mobile": 1}
    assert docs[0].text == "Mail [EMAIL] or [EMAIL], card [CARD]."


def test_edge_cases():
    assert REDACTOR.redact("") == ("", Counter())
    assert redact("😀 @ : . - +") == "😀 @ : . - +"
    long_line = "digits 1234 and words " * 50_000
    assert redact(long_line) == long_line
