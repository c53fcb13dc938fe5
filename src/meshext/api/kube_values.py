"""Formats and ranges Kubernetes and Maistra give values, checked as the API server would.

Label keys are qualified names (an optional DNS subdomain prefix of at most 253
characters and ``/``, then a name of at most 63 characters of alphanumerics, ``-``,
``_`` and ``.``, starting and ending with an alphanumeric); label values are empty or
such a name. Maistra's ``priority`` is a Go ``int32``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key, or ``None``."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return f"label key {key!r}: the prefix must be a DNS subdomain of at most 253 characters"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (
            f"label key {key!r}: the name must be 1-63 characters of letters, digits, "
            "'-', '_' and '.', starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or ``None``."""
    if value and (len(value) > 63 or not _QUALIFIED_NAME.match(value)):
        return (
            f"label value {value!r}: at most 63 characters of letters, digits, '-', '_' "
            "and '.', starting and ending with a letter or digit"
        )
    return None


def check_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """``labels`` if every key and value is valid; else ``ValueError`` naming the first."""
    for key, value in labels.items():
        problem = label_key_problem(key) or label_value_problem(value)
        if problem:
            raise ValueError(problem)
    return labels


def check_int32(value: int, what: str) -> int:
    if not INT32_MIN <= value <= INT32_MAX:
        raise ValueError(f"{what} {value} is outside the 32-bit range {INT32_MIN}..{INT32_MAX}")
    return value
