"""Domain checks of the values a caller passes, shared by the engine, the CLI and the service.

Each check raises an InputError subclass that says what is allowed, so every entry point
refuses the same values with the same words.
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import sys
import unicodedata

from frip_engine.errors import InputError, SubjectError

MAX_SUBJECT_CHARS = 128
MAX_SECONDS = 86_400.0  # a timeout or window given on the command line: at most a day
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


def brief(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a message (an integer too long for
    ``repr``, over 4300 digits, is described instead)."""
    try:
        text = repr(value)
    except ValueError:
        return f"(an integer of over {sys.get_int_max_str_digits()} digits)"
    return text if len(text) <= limit else text[:limit] + "..."


def finite_real(value: object) -> float | None:
    """``value`` as a finite float64 if it is a real number (not a bool) that fits one,
    else None: never OverflowError for a huge integer or fraction (10**400)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if math.isfinite(number) else None


def check_option(option: str, value: object, low: float, high: float, low_ok: bool) -> float:
    """``value`` of command-line option ``option`` as a finite float in ``[low, high]``
    (``(low, high]`` unless ``low_ok``), else InputError naming the option: NaN, which
    passes every comparison, and inf are refused."""
    number = finite_real(value)
    above = number is not None and (number >= low if low_ok else number > low)
    if number is None or not above or number > high:
        bound = ">=" if low_ok else ">"
        raise InputError(f"{option} must be a number {bound} {low:g} and <= {high:g}, not {value}")
    return number


def check_threshold(threshold: object) -> float:
    """A cosine decision threshold: a finite real number in [-1, 1], else InputError."""
    number = finite_real(threshold)
    if number is None or not -1.0 <= number <= 1.0:
        raise InputError(
            f"threshold {brief(threshold)} is outside [-1, 1]: it is a cosine similarity, "
            "a number from -1 to 1"
        )
    return number


def check_top_k(top_k: object) -> int:
    """How many candidates to return: a whole number from 1 to MAX_TOP_K, else InputError."""
    if (
        isinstance(top_k, bool)
        or not isinstance(top_k, numbers.Integral)
        or not 1 <= int(top_k) <= MAX_TOP_K
    ):
        raise InputError(f"top_k {brief(top_k)} must be a whole number from 1 to {MAX_TOP_K:,}")
    return int(top_k)


def refuse_special_file(path: str | os.PathLike[str], what: str) -> None:
    """Raise InputError if ``path`` exists but is not a regular file (a folder, a device
    such as /dev/null, a pipe, a socket); ``what`` names it in the message ("embedding file
    p.npy"). A missing path is left to the caller (its own MissingFileError)."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise InputError(
            f"{what} is not a regular file (a folder, a device such as /dev/null, or a "
            "pipe): give a file"
        )
