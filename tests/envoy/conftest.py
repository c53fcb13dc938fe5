"""Fixtures of the Envoy tests: the example modules, built once, and the echo application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import wasmtime

from tests.envoy.harness import EchoApp
from tests.envoy.support import build_examples

MODULES = Path(__file__).with_name("modules")


@pytest.fixture(scope="session")
def examples() -> Path:
    """The directory of the built example modules (built by make if out of date)."""
    return build_examples()


@pytest.fixture(scope="session")
def failing_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module whose proxy_on_configure returns false."""
    path = tmp_path_factory.mktemp("modules") / "fails-on-configure.wasm"
    path.write_bytes(wasmtime.wat2wasm((MODULES / "fails_on_configure.wat").read_text()))
    return path


@pytest.fixture
async def app() -> AsyncIterator[EchoApp]:
    async with EchoApp() as echo:
        yield echo
