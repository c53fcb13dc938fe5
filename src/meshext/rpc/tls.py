"""TLS for the gRPC server: a context that requires client certificates, speaks ``h2``
and can take a renewed certificate without a restart.

Python's ``ssl`` loads a certificate and key only from files. The key is written to
an anonymous in-memory file (``memfd_create``) and read back through ``/proc``, so it
never lands on a disk; where that is not available, to a private temporary folder
that is removed at once.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path


def server_context(cert_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> ssl.SSLContext:
    """A server context presenting ``cert_pem`` and requiring a client certificate that
    chains to ``bundle_pem``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=bundle_pem.decode("ascii"))
    context.set_alpn_protocols(["h2"])
    load_certificate(context, cert_pem, key_pem)
    return context


def load_certificate(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Present ``cert_pem`` (with ``key_pem``) on the handshakes that follow."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("meshext-serving-key", os.MFD_CLOEXEC)
        try:
            os.write(fd, cert_pem + b"\n" + key_pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
            return
        except OSError:
            pass
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="meshext-tls-") as folder:
        path = Path(folder) / "serving.pem"
        path.touch(mode=0o600)
        path.write_bytes(cert_pem + b"\n" + key_pem)
        context.load_cert_chain(str(path))


def add_trust(context: ssl.SSLContext, bundle_pem: bytes) -> None:
    """Also accept client certificates chaining to ``bundle_pem``."""
    context.load_verify_locations(cadata=bundle_pem.decode("ascii"))


__all__ = ["add_trust", "load_certificate", "server_context"]
