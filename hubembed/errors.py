"""Every error hubembed raises on purpose.

    HubembedError                  exit 1: something outside the user's input went wrong
    ├── HubUnreachableError        the Hub (or a remote API) could not be reached
    ├── RemoteError                a remote embedding API kept failing (see hubembed.retry)
    │   └── TimeBudgetExceeded     the job's time budget ran out; finished work is kept
    └── UsageError (ValueError)    exit 2: bad input the user can fix; nothing was written
        ├── SourceError            SRC missing, private, gated, unreadable, empty
        ├── ColumnError            no such column, not a text column, ambiguous
        ├── InvalidTextError       null or empty texts (see --skip-empty)
        ├── ModelError             model missing, gated, needs --trust-remote-code, bad prompt
        ├── AuthError              no token, or a token the Hub refuses
        └── DestinationError       DST holds something else, or cannot be written

Messages say what is wrong and how to fix it. They never contain a token: they are
built from repo ids, paths and status codes only.
"""

from __future__ import annotations


class HubembedError(Exception):
    """Base class: a failure hubembed explains instead of a traceback."""

    exit_code = 1


class HubUnreachableError(HubembedError):
    """The Hub or a remote endpoint could not be reached (DNS, refused, timed out)."""


class RemoteError(HubembedError):
    """A remote embedding API answered with an error that retrying cannot fix."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TimeBudgetExceeded(RemoteError):
    """The job ran out of its time budget; what was embedded so far is kept."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message  # why, without what was done (the build says that)


class UsageError(HubembedError, ValueError):
    """Bad input from the user. Exit code 2, and the destination is left untouched."""

    exit_code = 2


class SourceError(UsageError):
    """The source dataset cannot be found, read, or is empty."""


class ColumnError(UsageError, KeyError):
    """The text column is missing, not text, or cannot be guessed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidTextError(UsageError):
    """Some rows hold null or empty texts."""

    def __init__(self, message: str, *, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = rows


class ModelError(UsageError):
    """The embedding model cannot be used as asked."""


class AuthError(UsageError, PermissionError):
    """No token where one is needed, or a token the Hub refuses."""


class DestinationError(UsageError):
    """DST cannot be written: it holds something else, or the token may not write there."""
