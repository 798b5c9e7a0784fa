"""The CLI's two consoles, which print text as it is.

Rich would read ``[engine]`` or a subject id ``[bold]`` as markup and drop it, and
``:smile:`` as an emoji code, so both are off: messages and user data are never markup.
Colour is added explicitly with :func:`styled`, around text that stays literal.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import Progress
from rich.text import Text

out = Console(markup=False, emoji=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """One line from plain strings and ``(text, style)`` pairs; no part is parsed as markup."""
    return Text.assemble(*parts)


def progress_bar(hidden: bool = False) -> Progress:
    """A transient progress bar on stderr, drawn only on a terminal (and not when
    ``hidden``): in a pipe or a log it would leave blank lines around the messages."""
    return Progress(console=err, transient=True, disable=hidden or not err.is_terminal)


def shown(text: str) -> str:
    """A subject id as printed: always quoted, non-printing characters escaped
    (``'alice'``, ``' pad'``, ``'a\\u202eb'``), so padding and bidi overrides show."""
    return repr(text)
