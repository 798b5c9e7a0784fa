"""The CLI's two consoles, which print text as it is.

Rich would read ``[engine]`` or a subject id ``[bold]`` as markup and drop it, and
``:smile:`` as an emoji code, so both are off: messages and user data are never markup.
Colour is added explicitly with :func:`styled`, around text that stays literal.
"""

from __future__ import annotations

import os
import select
import sys
from typing import NoReturn

from rich.console import Console
from rich.progress import Progress
from rich.text import Text

BROKEN_PIPE_EXIT = 128 + 13  # 128 + SIGPIPE


def quit_on_broken_pipe() -> NoReturn:
    """End the run quietly after stdout's reader left (``frip identify ... | head -1``).

    Exit 141 = 128 + SIGPIPE, the status a shell reports for coreutils or git cut short
    this way: a ``set -o pipefail`` script sees a truncated producer, neither success (0
    would claim every line was written) nor an error of frip's (1 to 7). stdout goes to
    /dev/null so that the interpreter's last flush cannot raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(BROKEN_PIPE_EXIT)


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


class _Console(Console):
    """Rich's console, but a closed stdout pipe exits 141, not 1."""

    def on_broken_pipe(self) -> None:
        quit_on_broken_pipe()


out = _Console(markup=False, emoji=False, highlight=False)
err = _Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)


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


def print_warnings(warnings: list[str]) -> None:
    """Each of ``warnings`` on stderr as one yellow ``warning: ...`` line, never markup."""
    for warning in warnings:
        err.print(f"warning: {warning}", style="yellow", highlight=False, markup=False)
