"""Domain checks of the values a caller passes, shared by the engine, the CLI and the service.

Each check raises an InputError subclass that says what is allowed, so every entry point
refuses the same values with the same words.
"""

from __future__ import annotations

import difflib
import math
import numbers
import unicodedata

from frip_engine.errors import InputError, SubjectError

MAX_SUBJECT_CHARS = 128
MAX_TOP_K = 10_000
# Unicode categories that are invisible, reorder or break a line of output: controls
# (Cc: newline, tab, NUL, DEL, C1), formats (Cf: bidi overrides and isolates, zero-width
# characters, BOM), line and paragraph separators, surrogates, private use, unassigned.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
# Characters of printable categories that print as nothing: the Hangul fillers (letters,
# Lo) and the braille blank (So); Unicode lists the fillers as default-ignorable.
_BLANK = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800"}
_MARKS = {"Mn", "Mc", "Me"}  # combining marks: never first, they would join what precedes


def check_subject_id(subject: object) -> str:
    """Return ``subject`` if it is a usable subject id, else raise SubjectError.

    A subject id is 1-128 printable characters in Unicode NFC form, without leading or
    trailing whitespace, without control, format (bidi override, zero-width), separator,
    private-use, unassigned or blank-printing characters (Hangul fillers, braille blank),
    not starting with a combining mark, without '/', not '.' or '..', and with no space
    other than U+0020. Brackets, colons and other punctuation are data, printed as is.
    """
    if not isinstance(subject, str):
        raise SubjectError(f"subject id must be text, not {type(subject).__name__}")
    shown = ascii(subject[:40])
    if not subject or subject.strip() != subject:
        raise SubjectError(f"subject id {shown} is empty or has leading/trailing whitespace")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise SubjectError(
            f"subject id {shown}... has {len(subject)} characters; at most {MAX_SUBJECT_CHARS}"
        )
    if "/" in subject or subject in (".", ".."):
        raise SubjectError(
            f"subject id {shown} is or holds a path part ('/', '.' or '..'): such an id "
            "could not be named in the service's URLs or as an enrolment folder"
        )
    for position, char in enumerate(subject):
        category = unicodedata.category(char)
        if (
            category in _REFUSED_CATEGORIES
            or (category == "Zs" and char != " ")
            or char in _BLANK
            or (position == 0 and category in _MARKS)
        ):
            name = unicodedata.name(char, "unnamed")
            raise SubjectError(
                f"subject id {shown} has U+{ord(char):04X} ({name}, category {category}) at "
                f"position {position}: use printable characters and plain spaces only"
            )
    if not unicodedata.is_normalized("NFC", subject):
        raise SubjectError(
            f"subject id {shown} is not in Unicode NFC form (it would look the same as, but "
            "differ from, its composed spelling): compose it with unicodedata.normalize('NFC')"
        )
    return subject


def unknown_keys(unknown: list[str], accepted: set[str] | frozenset[str]) -> str:
    """``'prest' (did you mean 'preset'?), 'x'``: the unknown keys, each with the nearest
    accepted key where one is close, for a message that lists the accepted ones."""
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(accepted), n=1)
        hints.append(f"'{key}' (did you mean '{close[0]}'?)" if close else f"'{key}'")
    return ", ".join(hints)


def check_threshold(threshold: object) -> float:
    """A cosine decision threshold: a finite real number in [-1, 1], else InputError."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not math.isfinite(float(threshold))
        or not -1.0 <= float(threshold) <= 1.0
    ):
        raise InputError(
            f"threshold {threshold!r} is outside [-1, 1]: it is a cosine similarity, "
            "a number from -1 to 1"
        )
    return float(threshold)


def check_top_k(top_k: object) -> int:
    """How many candidates to return: a whole number from 1 to MAX_TOP_K, else InputError."""
    if (
        isinstance(top_k, bool)
        or not isinstance(top_k, numbers.Integral)
        or not 1 <= int(top_k) <= MAX_TOP_K
    ):
        raise InputError(f"top_k {top_k!r} must be a whole number from 1 to {MAX_TOP_K:,}")
    return int(top_k)
