"""PII scrubbing for exported training data: e-mail addresses, IP addresses, phone numbers.

Each is replaced by a placeholder (`[EMAIL]`, `[IP]`, `[PHONE]`). The patterns find
candidates generously and then check them (a real IP address by `ipaddress`, a phone
number by its digit count), so ordinary numbers, times, versions of two or three parts
and ISO dates stay. It is a safety net for what users paste, not a guarantee: names and
street addresses are not detected.
"""

import ipaddress
import re
from collections import Counter

EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|\d{1,3}(?:\.\d{1,3}){3})(?![\w:])")
IPV4 = re.compile(r"(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}(?![\w]|\.\d)")
PHONE = re.compile(r"(?<![\w+])(?:\+|\(\+?)?\d[\d\s().-]{5,18}\d(?!\w)")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
PLACEHOLDERS = {"email": "[EMAIL]", "ip": "[IP]", "phone": "[PHONE]"}


class Scrubber:
    """Replaces PII in texts and counts what it replaced, for the dataset card."""

    def __init__(self):
        self.counts = Counter()

    def __call__(self, text):
        text = EMAIL.sub(self._replace("email"), text)
        text = IPV6.sub(self._replace("ip", _is_ip), text)
        text = IPV4.sub(self._replace("ip", _is_ip), text)
        return PHONE.sub(self._replace("phone", _is_phone), text)

    def _replace(self, kind, check=None):
        def replace(match):
            if check is not None and not check(match.group()):
                return match.group()
            self.counts[kind] += 1
            return PLACEHOLDERS[kind]

        return replace


def _is_ip(candidate):
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def _is_phone(candidate):
    """7 to 15 digits (E.164 allows 15), and not a date like 2024-01-31."""
    digits = sum(c.isdigit() for c in candidate)
    return 7 <= digits <= 15 and not ISO_DATE.fullmatch(candidate.strip())
