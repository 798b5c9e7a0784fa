"""The CLI's two consoles, which print text as it is.

Rich would read ``[engine]`` or a subject id ``[bold]`` as markup and drop it, and
``:smile:`` as an emoji code, so both are off: messages and user data are never markup.
Colour is added explicitly with :func:`styled`, around text that stays literal.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

out = Console(markup=False, emoji=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line from plain strings and ``(text, style)`` pairs; no part is parsed as markup."""
    return Text.assemble(*parts)


def shown(text: str) -> str:
    """``text`` itself if it prints as one line of visible characters, else its escaped
    repr (a refused subject id may hold a newline or a bidi override)."""
    return text if text.isprintable() else ascii(text)
