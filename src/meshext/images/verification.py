"""Applying the mesh's signature policy to a resolved image or module file.

:class:`SignatureVerifier` sits between the puller and the resolver's caller: the
module is already verified against its digests and cached, but it is handed out
only if the policy allows it.

* ``off``: nothing is looked at.
* ``warn``: signatures are looked for and judged; the result is logged and, when
  verified, the signer reported; an image without a trusted signature still runs.
* ``enforce``: the image runs only with a valid signature by a trusted key over its
  digest (a cosign signature or a Sigstore bundle; a bundle may instead be signed
  with a certificate naming a trusted identity); anything else raises
  :class:`SignatureRefused`, naming the digest, what was found and why it did not
  count. A ``file:`` module needs a detached
  signature next to it (``<file>.sig``, base64, as ``cosign sign-blob
  --output-signature`` writes) over the module bytes.

For an image reached through an index, a signature over the index digest (what
``cosign sign`` of the tag signs) or over the chosen manifest's digest counts.

A place that cannot be read (an oversized or malformed signature manifest or
payload, a registry refusing the referrers API) is a finding like any other and does
not hide a valid signature found elsewhere; without one, under ``enforce`` the image
is refused with that reason, under ``warn`` it is logged. A transient registry
failure is raised as such, to be retried.

Positive verdicts are remembered in memory per digest, so a pinned or cached image
costs registry requests for its signatures once per process, not on every resolve;
a refusal is never remembered, so signing an image later takes effect on the next
resolve.
"""

from __future__ import annotations

import logging
from pathlib import Path

from meshext.images.errors import ImageError
from meshext.images.signature_discovery import Discovery, Referrers, find_signatures, places
from meshext.images.signatures import (
    PayloadError,
    SignatureVerdict,
    Signer,
    decode_signature,
    judge,
    signing_key,
)
from meshext.images.sigstore_bundle import judge_bundles
from meshext.images.source import ImageSource
from meshext.images.trust import SIGNATURES_OFF, SignatureMode, SignaturePolicy, TrustedKey

log = logging.getLogger(__name__)

DETACHED_SUFFIX = ".sig"
DETACHED_KIND = "detached signature"
_MAX_DETACHED = 16 * 1024


class SignatureRefused(ImageError):
    """The policy enforces signatures and the image or module has no trusted one."""


class SignatureVerifier:
    """Checks images and module files against one :class:`SignaturePolicy`."""

    def __init__(self, policy: SignaturePolicy = SIGNATURES_OFF) -> None:
        self.policy = policy
        self._verified: dict[str, SignatureVerdict] = {}

    def __repr__(self) -> str:
        return f"SignatureVerifier({self.policy.mode.value}, keys={len(self.policy.keys)})"

    def mode_for(self, namespace: str) -> SignatureMode:
        """The mode applied to the extensions of ``namespace``."""
        return self.policy.mode

    async def check_image(
        self,
        source: ImageSource,
        digests: tuple[str, ...],
        referrers: Referrers | None,
        namespace: str = "",
    ) -> Signer | None:
        """The trusted signer of the first of ``digests`` signed, or ``None`` (warn/off).

        ``namespace`` is the extension's: its own keys count besides the mesh's.
        Raises :class:`SignatureRefused` under ``enforce`` when none is signed.
        """
        if not self.policy.active:
            return None
        keys = self.policy.keys_for(namespace)
        verdicts: list[SignatureVerdict] = []
        for digest in dict.fromkeys(digests):
            remembered = self._remembered(digest, namespace)
            verdict = self._verified.get(remembered)
            if verdict is None:
                try:
                    discovery = await find_signatures(source, digest, referrers)
                except ImageError as exc:
                    if self.policy.mode is SignatureMode.ENFORCE:
                        raise
                    log.warning("signatures of %s: %s (policy 'warn': delivered)", digest, exc)
                    return None
                verdict = self._judge(
                    digest, discovery, keys, places(digest, referrers is not None)
                )
            if verdict.verified:
                self._verified[remembered] = verdict
                return verdict.signer
            verdicts.append(verdict)
        self._refuse(source.name, " / ".join(v.explain() for v in verdicts))
        return None

    def _judge(
        self, digest: str, discovery: Discovery, keys: tuple[TrustedKey, ...], looked_at: str
    ) -> SignatureVerdict:
        """Cosign signatures first, then bundles; every finding of both if neither counts."""
        classic = judge(digest, discovery.signatures, keys, looked_at, discovery.problems)
        if classic.verified or not discovery.bundles:
            return classic
        bundled = judge_bundles(
            digest, discovery.bundles, keys, self.policy.certificates, looked_at
        )
        if bundled.verified:
            return bundled
        return SignatureVerdict(digest, None, looked_at, classic.findings + bundled.findings)

    def check_file(
        self, path: Path, cached: Path, sha256: str, namespace: str = ""
    ) -> Signer | None:
        """The trusted signer of module file ``path`` (by its detached ``.sig``).

        The signature is checked against ``cached``, the copy whose hash is
        ``sha256`` and which is what gets served, not against ``path`` again.
        """
        if not self.policy.active:
            return None
        remembered = self._remembered(f"file:{sha256}", namespace)
        known = self._verified.get(remembered)
        if known is not None:
            return known.signer
        signature_path = path.with_name(path.name + DETACHED_SUFFIX)
        try:
            with signature_path.open("rb") as stream:
                text = stream.read(_MAX_DETACHED + 1)
            module = cached.read_bytes()
        except FileNotFoundError:
            self._refuse(
                f"file:{path}",
                f"module sha256:{sha256} has no detached signature {signature_path}",
            )
            return None
        except OSError as exc:
            self._refuse(f"file:{path}", f"cannot read {signature_path}: {exc}")
            return None
        where = f"detached signature {signature_path.name}"
        if len(text) > _MAX_DETACHED:
            self._refuse(f"file:{path}", f"{where}: over {_MAX_DETACHED} bytes")
            return None
        try:
            raw = decode_signature(text.decode("ascii", "replace"))
        except PayloadError as exc:
            self._refuse(f"file:{path}", f"{where}: unreadable ({exc})")
            return None
        key = signing_key(self.policy.keys_for(namespace), module, raw)
        if key is None:
            self._refuse(
                f"file:{path}", f"module sha256:{sha256}: {where} is signed by no trusted key"
            )
            return None
        signer = Signer(str(key), DETACHED_KIND)
        self._verified[remembered] = SignatureVerdict(sha256, signer, where, ())
        return signer

    def _remembered(self, digest: str, namespace: str) -> str:
        """Where a verdict is remembered: one signed with a namespace's own key counts
        for that namespace only."""
        return f"{namespace}/{digest}" if self.policy.has_own_keys(namespace) else digest

    def check_url(self, url: str, sha256: str, namespace: str = "") -> None:
        """An http(s) module carries no signature meshext can read: refused under enforce."""
        if not self.policy.active:
            return
        shown = url.split("?", 1)[0]
        self._refuse(
            shown,
            f"module sha256:{sha256} comes from an http(s) URL, which carries no cosign "
            "signature; publish it as a signed OCI image instead",
        )

    def _refuse(self, name: str, why: str) -> None:
        message = f"signature check of {name} failed: {why}"
        if self.policy.mode is SignatureMode.ENFORCE:
            raise SignatureRefused(f"refused by the signature policy: {message}")
        log.warning("%s (signature policy 'warn': delivered anyway)", message)
