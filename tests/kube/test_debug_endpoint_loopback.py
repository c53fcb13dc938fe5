"""The controller's /debug endpoint answers loopback clients only, whatever address
its port is bound to (in a cluster it shares the port probes and proxies reach)."""

from __future__ import annotations

from typing import Any, cast
from unittest import mock

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from meshext.kube.controller import Controller
from meshext.kube.http import admin_app


async def debug_from(address: str) -> web.StreamResponse:
    app = admin_app(cast(Controller, object()))
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (address, 40000) if name == "peername" else default
    )
    request = make_mocked_request("GET", "/debug/controller", app=app, transport=transport)
    match = await app.router.resolve(request)
    handler: Any = match.handler
    return cast(web.StreamResponse, await handler(request))


@pytest.mark.parametrize("address", ["10.0.0.7", "192.168.1.20", "fd00::1"])
async def test_debug_is_forbidden_to_other_hosts(address: str) -> None:
    with pytest.raises(web.HTTPForbidden):
        await debug_from(address)
