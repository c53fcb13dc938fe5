"""Registry credentials: docker ``config.json`` / ``.dockerconfigjson`` and auth challenges.

Both Kubernetes pull secrets (``.dockerconfigjson``) and a docker ``config.json``
carry an ``auths`` map from a registry key to ``{"auth": base64("user:password")}``
or ``{"username", "password"}``. Keys are spelt many ways (``quay.io``,
``https://quay.io``, ``https://index.docker.io/v1/``, ``registry.example/team``);
:meth:`DockerConfig.credentials_for` normalizes them and picks the most specific
key that covers the repository, as the kubelet does.

A registry says how to authenticate in its ``WWW-Authenticate`` header;
:func:`parse_challenge` reads it (RFC 7235 auth-params, quoted strings included).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field

from meshext.images.reference import canonical_registry


class CredentialsError(ValueError):
    """A ``.dockerconfigjson`` / ``config.json`` document cannot be read."""


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token) for one registry."""

    username: str
    password: str = field(repr=False)

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    @property
    def fingerprint(self) -> str:
        """A stable identity of these credentials that does not reveal the password."""
        material = f"{len(self.username)}:{self.username}:{self.password}".encode()
        return hashlib.sha256(b"meshext-credentials\0" + material).hexdigest()


ANONYMOUS_FINGERPRINT = "anonymous"


@dataclass(frozen=True)
class _AuthEntry:
    host_pattern: str
    path: str
    credentials: Credentials


@dataclass(frozen=True)
class DockerConfig:
    """The ``auths`` of one docker config document, normalized."""

    entries: tuple[_AuthEntry, ...] = ()
    source: str = ""

    @classmethod
    def parse(cls, data: bytes, source: str = "config.json") -> DockerConfig:
        """Parse ``.dockerconfigjson`` / ``config.json`` bytes (or a bare ``.dockercfg`` map)."""
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CredentialsError(f"{source}: not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise CredentialsError(f"{source}: expected a JSON object")
        auths = document.get("auths", document)
        if not isinstance(auths, dict):
            raise CredentialsError(f"{source}: 'auths' must be an object")
        entries: list[_AuthEntry] = []
        for key, value in auths.items():
            if not isinstance(value, dict) or not isinstance(key, str):
                continue
            credentials = _entry_credentials(value, f"{source}: auths[{key!r}]")
            if credentials is None:
                continue
            host, path = _normalize_key(key)
            entries.append(_AuthEntry(host, path, credentials))
        return cls(tuple(entries), source)

    def credentials_for(self, registry: str, repository: str) -> Credentials | None:
        """The credentials of the most specific entry covering ``registry/repository``."""
        registry = canonical_registry(registry)
        best: tuple[int, Credentials] | None = None
        for entry in self.entries:
            if not _host_matches(entry.host_pattern, registry):
                continue
            if entry.path and not (
                repository == entry.path or repository.startswith(entry.path + "/")
            ):
                continue
            score = len(entry.path) * 2 + (0 if "*" in entry.host_pattern else 1)
            if best is None or score > best[0]:
                best = (score, entry.credentials)
        return best[1] if best else None

    def __bool__(self) -> bool:
        return bool(self.entries)


def _entry_credentials(value: dict[str, object], where: str) -> Credentials | None:
    auth = value.get("auth")
    if isinstance(auth, str) and auth:
        try:
            decoded = base64.b64decode(auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CredentialsError(f"{where}.auth: not base64 of 'user:password'") from exc
        user, sep, password = decoded.partition(":")
        if not sep:
            raise CredentialsError(f"{where}.auth: expected base64 of 'user:password'")
        return Credentials(user, password)
    username, secret = value.get("username"), value.get("password")
    if isinstance(username, str) and isinstance(secret, str) and username:
        return Credentials(username, secret)
    return None


def _normalize_key(key: str) -> tuple[str, str]:
    text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", key.strip().lower())
    host, _, path = text.partition("/")
    path = path.strip("/")
    if re.fullmatch(r"v[12]", path):
        path = ""
    return canonical_registry(host), path


def _host_matches(pattern: str, host: str) -> bool:
    if "*" not in pattern:
        return pattern == host
    pattern_labels, host_labels = pattern.split("."), host.split(".")
    return len(pattern_labels) == len(host_labels) and all(
        fnmatch.fnmatchcase(h, p) for p, h in zip(pattern_labels, host_labels, strict=True)
    )


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: ``Bearer`` or ``Basic`` and its parameters."""

    scheme: str
    params: dict[str, str]


_PARAM = re.compile(r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')


def parse_challenge(header: str) -> Challenge | None:
    """The first challenge in ``header``, or ``None`` if it has none."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            break
        value = match.group(2)
        value = re.sub(r"\\(.)", r"\1", value) if value is not None else match.group(3)
        params[match.group(1).lower()] = value
        position = match.end()
    return Challenge(scheme.lower(), params)
