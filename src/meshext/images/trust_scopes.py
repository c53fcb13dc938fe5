"""The signature policy of one namespace, from the operator's, its mesh's and its own keys.

On Kubernetes three parties say which keys sign trusted extension images:

* the **operator** of meshext (``--trusted-keys DIR`` and ``--signature-policy``):
  keys for every mesh meshext serves, ``DIR/<namespace>/`` for one namespace;
* the **mesh** (its ServiceMeshControlPlane): a mode for the whole mesh and keys
  published in its control-plane namespace;
* a **member namespace**: keys published in that namespace, for its own extensions.

:func:`scoped_trust` combines them for the extensions of one namespace:

* the mode is the strictest of the operator's and the mesh's (``enforce`` over
  ``warn`` over ``off``); a namespace never changes it;
* the keys are the operator's (with its ``DIR/<namespace>/`` keys), the mesh's and,
  for a member namespace only, the namespace's own. Extensions in the control-plane
  namespace apply to the whole mesh, so they count the mesh's keys only, never a
  member's.

A mode that is on with no key (and no certificate trust of the operator) trusts nothing: every image of that scope is
refused (``enforce``) or reported (``warn``), and the reason names where keys are
expected. A mode written wrongly counts as ``enforce`` (failing closed) and is
reported. Keys that do not parse are reported by the object and entry they came from;
the others of the same object still count.

Everything here is pure: reading the objects is the caller's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshext.images.certificate_trust import CertificateTrust
from meshext.images.trust import (
    SignatureMode,
    SignaturePolicy,
    TrustConfigError,
    TrustedKey,
    parse_public_keys,
)

_STRICTNESS = {SignatureMode.OFF: 0, SignatureMode.WARN: 1, SignatureMode.ENFORCE: 2}


@dataclass(frozen=True)
class KeySet:
    """The keys one object publishes, and what could not be read in it."""

    keys: tuple[TrustedKey, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeshSignatures:
    """What a mesh says: ``mode`` as written (``None``: not set) and its keys."""

    origin: str
    """The object that sets the mode, e.g. ``ServiceMeshControlPlane istio-system/basic``."""
    mode: str | None = None
    keys: KeySet = KeySet()
    keys_hint: str = ""
    """Where the mesh's keys are published, said when there are none."""


@dataclass(frozen=True)
class ScopedTrust:
    """The policy for the extensions of one namespace."""

    namespace: str
    mode: SignatureMode
    keys: tuple[TrustedKey, ...]
    decided_by: str
    """Who set the mode (``--signature-policy`` or a ServiceMeshControlPlane)."""
    problems: tuple[str, ...] = ()
    keys_hint: str = ""
    certificates: CertificateTrust | None = None
    """The operator's authorities and identities for certificate-signed bundles."""

    @property
    def identity(self) -> tuple[str, ...]:
        """Equal for two scopes that trust the same keys and certificates under one mode."""
        certificates = (
            () if self.certificates is None else (f"certificates={id(self.certificates)}",)
        )
        return (self.mode.value, *(f"{k.name}={k.fingerprint}" for k in self.keys), *certificates)

    def policy(self) -> SignaturePolicy | None:
        """The policy to verify with; ``None`` when the mode is off or nothing is trusted."""
        if self.mode is SignatureMode.OFF or (not self.keys and self.certificates is None):
            return None
        return SignaturePolicy(self.mode, self.keys, certificates=self.certificates)

    def without_keys(self) -> str:
        """Why nothing can be verified when the mode is on and no key is trusted."""
        where = f": {self.keys_hint}" if self.keys_hint else ""
        return (
            f"{self.decided_by} asks for signature policy {self.mode.value!r}, "
            f"but no trusted key applies to namespace {self.namespace!r}{where}"
        )

    def with_problems(self, message: str) -> str:
        """``message`` followed by the configuration problems of this scope."""
        if not self.problems:
            return message
        return f"{message} (trusted keys that could not be read: {'; '.join(self.problems)})"


def strictest(*modes: SignatureMode) -> SignatureMode:
    return max(modes, key=_STRICTNESS.__getitem__, default=SignatureMode.OFF)


def parse_key_entries(entries: Mapping[str, object], where: str) -> KeySet:
    """The public keys in the entries of one object (a ConfigMap's ``data``).

    Each entry holds one or more PEM ``PUBLIC KEY`` blocks and is reported as
    ``<where>:<entry>``; an entry that does not parse is a problem naming it, and
    the other entries still count.
    """
    keys: list[TrustedKey] = []
    problems: list[str] = []
    for entry in sorted(entries):
        value = entries[entry]
        name = f"{where}:{entry}"
        if not isinstance(value, str):
            problems.append(f"{name}: not text")
            continue
        try:
            keys.extend(parse_public_keys(value.encode(), name))
        except TrustConfigError as exc:
            problems.append(str(exc))
    if not entries:
        problems.append(f"{where}: holds no entry")
    return KeySet(tuple(keys), tuple(problems))


def mesh_mode(mesh: MeshSignatures) -> tuple[SignatureMode, str | None]:
    """The mode a mesh asks for, and a problem when it is written wrongly."""
    if mesh.mode is None:
        return SignatureMode.OFF, None
    try:
        return SignatureMode(mesh.mode), None
    except ValueError:
        choices = ", ".join(m.value for m in SignatureMode)
        return SignatureMode.ENFORCE, (
            f"{mesh.origin}: signaturePolicy {mesh.mode!r} is not one of {choices}; "
            "treated as 'enforce' until corrected"
        )


def scoped_trust(
    operator: SignaturePolicy,
    namespace: str,
    *,
    mesh_namespace: str,
    mesh: MeshSignatures,
    namespace_keys: Iterable[KeySet] = (),
) -> ScopedTrust:
    """The policy for extensions of ``namespace``, in the mesh of ``mesh_namespace``.

    ``namespace_keys`` are what ``namespace`` itself publishes; they are ignored for
    the control-plane namespace (whose extensions apply mesh-wide) and never change
    the mode.
    """
    wanted, problem = mesh_mode(mesh)
    mode = strictest(operator.mode, wanted)
    if mode is SignatureMode.OFF:
        decided_by = "signature policy"
    elif _STRICTNESS[wanted] >= _STRICTNESS[operator.mode]:
        decided_by = mesh.origin
    else:
        decided_by = "meshext's --signature-policy"
    problems = [problem] if problem else []
    keys = list(operator.keys_for(namespace)) + list(mesh.keys.keys)
    problems.extend(mesh.keys.problems)
    if namespace != mesh_namespace:
        for published in namespace_keys:
            keys.extend(published.keys)
            problems.extend(published.problems)
    unique: dict[str, TrustedKey] = {}
    for key in keys:
        unique.setdefault(key.fingerprint, key)
    return ScopedTrust(
        namespace,
        mode,
        tuple(unique.values()),
        decided_by,
        tuple(problems),
        mesh.keys_hint,
        operator.certificates,
    )
