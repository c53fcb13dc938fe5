"""Faults of the control loop itself, kept where users look: errors, readiness, logs.

A round of the control loop (taking a new configuration, recomputing proxies,
publishing status) that fails unexpectedly must neither end the loop nor go
unnoticed. Each failing part records its fault here under its own name; the fault
lasts until that part next succeeds. ``/readyz`` fails while any fault lasts, and
``/api/v1/errors`` and ``meshext status`` show them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fault:
    part: str
    message: str

    def __str__(self) -> str:
        return f"control loop: {self.part} failed: {self.message}"


class Faults:
    """The current fault of each part of the control loop that has one."""

    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}

    def failed(self, part: str, exc: BaseException) -> None:
        """Record (and log, with the traceback) that ``part`` failed with ``exc``."""
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if len(message) > 2000:
            message = message[:2000] + "..."
        self._faults[part] = Fault(part, message)
        log.error("control loop: %s failed", part, exc_info=exc)

    def succeeded(self, part: str) -> None:
        if self._faults.pop(part, None) is not None:
            log.info("control loop: %s works again", part)

    def current(self) -> list[Fault]:
        return [self._faults[p] for p in sorted(self._faults)]
