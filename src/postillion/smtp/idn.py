"""Internationalised domain names in MAIL and RCPT paths (RFC 5890, 5891).

A label that begins `xn--` is an A-label, the ASCII spelling of a U-label.
One that does not decode (`xn---`, `xn--zz`), decodes to plain ASCII
(`xn--abc-`) or to something no IDNA standard allows (`xn--a-ecp`, "a⒈")
names no host anywhere: the protocol machine refuses the address as it
refuses any other malformed one, instead of queueing mail that can only
bounce and lookups that can only miss.

The stdlib's `encodings.idna` implements IDNA 2003 only; judged by it alone,
IDNA 2008 labels in use today (`xn--fa-hia`, "faß"; `xn--nxasmm1c`, "βόλος")
would be refused, and IDNA 2008 alone would refuse the IDNA 2003 labels still
registered (emoji).  So an A-label is valid when it is the canonical
Punycode of a non-ASCII label that *either* standard allows; for IDNA 2008
the code point classes are approximated with `unicodedata` (letters and
digits that case folding and NFKC leave alone, RFC 5892 §2) and the bidi
rule checked for right-to-left labels (RFC 5893); the contextual rules of
RFC 5892 Appendix A and its few script-specific exclusions (old Hangul
jamo, variation selectors) are not.

A UTF-8 domain (SMTPUTF8) is checked through the spelling lookups and the
queue will use: `encodings.idna` writes it in A-labels (the session does the
same), and what it cannot write is refused.  Pure functions, no I/O.
"""

from __future__ import annotations

import encodings.idna
import unicodedata
from typing import Final

__all__ = ["ACE_PREFIX", "a_labels_valid", "is_a_label", "to_ascii"]

ACE_PREFIX: Final = "xn--"

#: IDNA 2008's LetterDigits categories (RFC 5892 §2.1) less Lu, which case
#: folding never leaves alone.
_LETTER_DIGITS: Final = frozenset({"Ll", "Lo", "Lm", "Mn", "Mc", "Nd"})
#: RFC 5892 §2.6 exceptions that are PVALID although folding changes them or
#: their category is not a letter's: ß, ς, two Arabic signs, a Tibetan mark, 〇.
_PVALID_EXCEPTIONS: Final = frozenset("\u00df\u03c2\u06fd\u06fe\u0f0b\u3007")
#: Bidi classes allowed in a right-to-left label (RFC 5893 §2, rule 2), and
#: those it may end with before any NSM (rule 3).
_RTL_ALLOWED: Final = frozenset({"R", "AL", "AN", "EN", "ES", "CS", "ET", "ON", "BN", "NSM"})
_RTL_END: Final = frozenset({"R", "AL", "EN", "AN"})
#: CONTEXTJ and CONTEXTO code points (RFC 5892 Appendix A): allowed anywhere
#: but first, their context rules not checked.
_CONTEXTUAL: Final = frozenset("\u200c\u200d\u00b7\u0375\u05f3\u05f4\u30fb")


def is_a_label(label: str) -> bool:
    """Whether `label` (ASCII, any case) is a valid A-label (RFC 5891 §5.4).

    It must decode as Punycode, to a label with a non-ASCII character, that
    encodes back to the same text (no second spelling of a name), and that
    IDNA 2003 or IDNA 2008 allows.
    """
    ace = label.lower()
    if not ace.startswith(ACE_PREFIX):
        return False
    encoded = ace[len(ACE_PREFIX):]
    try:
        ulabel = encoded.encode("ascii").decode("punycode")
    except ValueError:  # UnicodeError: not Punycode at all
        return False
    if ulabel.isascii() or ulabel.encode("punycode") != encoded.encode("ascii"):
        return False
    return _idna2003(ulabel, ace) or _idna2008(ulabel)


def a_labels_valid(domain: str) -> bool:
    """Whether every `xn--` label of an ASCII domain is a valid A-label."""
    return all(is_a_label(label) for label in domain.split(".")
               if label[:len(ACE_PREFIX)].lower() == ACE_PREFIX)


def to_ascii(domain: str) -> str | None:
    """A UTF-8 domain in A-labels, as the session writes it; None if it
    cannot be written (a prohibited character, a label too long)."""
    try:
        return domain.encode("idna").decode("ascii")
    except ValueError:  # UnicodeError
        return None


def _idna2003(ulabel: str, ace: str) -> bool:
    """IDNA 2003 (the stdlib codec): ToASCII(ulabel) gives `ace` back."""
    try:
        return encodings.idna.ToASCII(ulabel) == ace.encode("ascii")
    except ValueError:  # UnicodeError
        return False


def _idna2008(ulabel: str) -> bool:
    """IDNA 2008's shape of a U-label (RFC 5891 §5.4, RFC 5892 §2): NFC,
    no hyphen at either end nor in positions 3-4, no combining mark first,
    and only letters and digits stable under NFKC and case folding."""
    if (not unicodedata.is_normalized("NFC", ulabel) or ulabel[0] == "-" or ulabel[-1] == "-"
            or ulabel[2:4] == "--" or unicodedata.category(ulabel[0])[0] == "M"
            or ulabel[0] in _CONTEXTUAL):
        return False
    return all(_pvalid(ch) for ch in ulabel) and _bidi_ok(ulabel)


def _pvalid(ch: str) -> bool:
    if ch == "-" or ch in _PVALID_EXCEPTIONS or ch in _CONTEXTUAL:
        return True
    return (unicodedata.category(ch) in _LETTER_DIGITS
            and unicodedata.normalize("NFKC", ch).casefold() == ch)


def _bidi_ok(ulabel: str) -> bool:
    """RFC 5893 rules 1-4 for a label with right-to-left characters: it
    starts with one, holds no left-to-right ones, ends with a letter or
    digit, and does not mix European and Arabic digits."""
    classes = [unicodedata.bidirectional(ch) for ch in ulabel]
    if not {"R", "AL", "AN"} & set(classes):
        return True
    end = next((c for c in reversed(classes) if c != "NSM"), "")
    return (classes[0] in ("R", "AL") and set(classes) <= _RTL_ALLOWED and end in _RTL_END
            and not {"EN", "AN"} <= set(classes))
