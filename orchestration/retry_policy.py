"""A task step's retry policy, part of the DSL (``from orchestration.definitions import
RetryPolicy`` keeps working): how many attempts, how long between them, what is never retried.
The engine applies it (:mod:`orchestration.engine.retrying`); step code never retries itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Any


class NonRetryableError(Exception):
    """Raise from a step to fail it at once, whatever its retry policy says."""

    # Its public home, and the name stored as a failed step's error type since the first
    # release (``orchestration.definitions.NonRetryableError``): history and API keep it.
    __module__ = "orchestration.definitions"


@dataclass(frozen=True)
class RetryPolicy:
    """How the engine retries a failing task step (never the step's own code).

    The delay before attempt ``n + 1`` is ``initial_interval * backoff_coefficient ** (n - 1)``,
    capped at ``max_interval``, then multiplied by a random factor in ``[1 - jitter, 1]`` so
    that many steps failing together do not retry in lockstep.
    """

    max_attempts: int = 3
    initial_interval: timedelta = timedelta(seconds=1)
    backoff_coefficient: float = 2.0
    max_interval: timedelta = timedelta(seconds=100)
    non_retryable: tuple[type[BaseException] | str, ...] = ()
    jitter: float = 0.2

    def problems(self) -> list[str]:
        found = []
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            found.append(f"max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if not isinstance(self.initial_interval, timedelta) or self.initial_interval < timedelta(0):
            found.append("initial_interval must be a non-negative timedelta")
        if not isinstance(self.max_interval, timedelta) or self.max_interval < timedelta(0):
            found.append("max_interval must be a non-negative timedelta")
        elif (
            isinstance(self.initial_interval, timedelta)
            and self.max_interval < self.initial_interval
        ):
            found.append("max_interval must not be shorter than initial_interval")
        if not isinstance(self.backoff_coefficient, int | float) or self.backoff_coefficient < 1:
            found.append(f"backoff_coefficient must be >= 1, got {self.backoff_coefficient!r}")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter < 1:
            found.append(f"jitter must be in [0, 1), got {self.jitter!r}")
        for item in self.non_retryable:
            if not (
                isinstance(item, str)
                or (isinstance(item, type) and issubclass(item, BaseException))
            ):
                found.append(
                    f"non_retryable entries must be exception classes or names, got {item!r}"
                )
        return found

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> timedelta:
        """The wait after attempt number ``failed_attempt`` (counted from 1) failed."""
        base = self.initial_interval.total_seconds() * self.backoff_coefficient ** max(
            failed_attempt - 1, 0
        )
        capped = min(base, self.max_interval.total_seconds())
        factor = 1.0 - (rng or random).random() * self.jitter
        return timedelta(seconds=capped * factor)

    def is_retryable(self, error: BaseException) -> bool:
        if isinstance(error, NonRetryableError):
            return False
        for item in self.non_retryable:
            if isinstance(item, type) and isinstance(error, item):
                return False
            if isinstance(item, str):
                for klass in type(error).__mro__:
                    if item in (klass.__name__, f"{klass.__module__}.{klass.__qualname__}"):
                        return False
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "max_attempts": self.max_attempts,
            "initial_interval": self.initial_interval.total_seconds(),
            "backoff_coefficient": self.backoff_coefficient,
            "max_interval": self.max_interval.total_seconds(),
            "non_retryable": [
                item if isinstance(item, str) else f"{item.__module__}.{item.__qualname__}"
                for item in self.non_retryable
            ],
            "jitter": self.jitter,
        }
