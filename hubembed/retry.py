"""The one retry policy, used by every remote call.

Why not a retry library: the waits here are mostly chosen by the server (a loading model's
``estimated_time``, ``Retry-After``, ``RateLimit``), the deadline is one job-wide time budget
shared by concurrent requests, and a "batch too large" answer is met by splitting, not by
retrying. With tenacity each of those is a custom wait/stop/retry callable and only the loop
remains; ``retry`` is unmaintained since 2016 and depends on the deprecated ``py``. So this
is a small loop, in the spirit of huggingface_hub's ``http_backoff``, with an injected clock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import RemoteError, TimeBudgetExceeded

T = TypeVar("T")


class RetryableError(RemoteError):
    """A failure worth trying again: the server says when (``retry_after``) or we back off."""

    def __init__(self, reason: str, *, retry_after: float | None = None, waiting: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        # Waiting for a loading model or a rate-limit window is expected, not an error: it
        # does not use up max_attempts, only the time budget (and max_waits).
        self.waiting = waiting


class BatchTooLargeError(RemoteError):
    """The server refused the batch for its size (413, or TEI's 422): split it and go on."""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8  # errors (5xx, dropped connections, bad answers) per request
    max_waits: int = 120  # loading / rate-limit waits per request
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    wait_max: float = 300.0  # cap on any server-requested wait
    request_timeout: float = 120.0

    def delay(self, attempt: int, error: RetryableError) -> float:
        """Seconds to wait before attempt number ATTEMPT + 1."""
        if error.retry_after is not None:
            return max(0.0, min(error.retry_after, self.wait_max))
        # Exponential with jitter, so concurrent requests do not retry in lockstep.
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling * random.uniform(0.5, 1.0)


class Deadline:
    """A job's time budget, shared by all its requests."""

    def __init__(self, budget: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.clock = clock
        self.end = None if budget is None else clock() + budget

    def remaining(self) -> float | None:
        return None if self.end is None else self.end - self.clock()


def call_with_retry(
    request: Callable[[float], T],
    policy: RetryPolicy,
    deadline: Deadline,
    *,
    on_wait: Callable[[float, str], None] = lambda seconds, reason: None,
    cancelled: threading.Event | None = None,
) -> T:
    """Call REQUEST(timeout) until it succeeds, as POLICY says, within DEADLINE.

    Raises the last error once attempts run out, TimeBudgetExceeded when a wait would pass
    the deadline, and lets every non-retryable error through at once.
    """
    cancelled = cancelled or threading.Event()
    errors = waits = 0
    while True:
        remaining = deadline.remaining()
        if remaining is not None and remaining <= 0:
            raise TimeBudgetExceeded(f"the time budget of {deadline.budget:g} s ran out")
        timeout = policy.request_timeout if remaining is None else min(policy.request_timeout, remaining)
        try:
            return request(timeout)
        except RetryableError as exc:
            if exc.waiting:
                waits += 1
                spent, limit = waits, policy.max_waits
            else:
                errors += 1
                spent, limit = errors, policy.max_attempts
            if spent >= limit:
                raise RemoteError(f"gave up after {spent} tries: {exc.reason}") from exc
            wait = policy.delay(spent, exc)
            remaining = deadline.remaining()
            if remaining is not None and wait >= remaining:
                raise TimeBudgetExceeded(
                    f"the time budget of {deadline.budget:g} s ran out while the server kept answering: "
                    f"{exc.reason}"
                ) from exc
            on_wait(wait, exc.reason)
            if cancelled.wait(wait):
                raise RemoteError("cancelled: another request failed") from exc
