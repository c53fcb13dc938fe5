"""Where meshext keeps state on a host: ``$MESHEXT_CACHE`` or ``~/.cache/meshext``.

The CA lives in ``<state>/ca`` and proxies' credentials in
``<state>/credentials/<namespace>/<service-account>`` unless flags choose otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("MESHEXT_CACHE") or Path.home() / ".cache" / "meshext")


def default_ca_dir() -> Path:
    return state_dir() / "ca"


def credentials_root() -> Path:
    return state_dir() / "credentials"


def default_credentials_dir(namespace: str, service_account: str) -> Path:
    return credentials_root() / namespace / service_account
