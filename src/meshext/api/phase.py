"""Maistra's six extension phases and their order in the HTTP filter chain."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    """Where an extension runs relative to authentication, authorization and stats."""

    PRE_AUTHN = "PreAuthN"
    POST_AUTHN = "PostAuthN"
    PRE_AUTHZ = "PreAuthZ"
    POST_AUTHZ = "PostAuthZ"
    PRE_STATS = "PreStats"
    POST_STATS = "PostStats"

    @property
    def rank(self) -> int:
        """Position in execution order: PreAuthN is 0, PostStats is 5."""
        return PHASE_ORDER.index(self)

    @classmethod
    def parse(cls, value: str) -> Phase:
        """The phase named ``value``; an unknown name is an error, never dropped."""
        for phase in cls:
            if phase.value == value:
                return phase
        valid = ", ".join(p.value for p in cls)
        raise ValueError(f"unknown phase {value!r}; expected one of {valid}")


PHASE_ORDER: tuple[Phase, ...] = tuple(Phase)
