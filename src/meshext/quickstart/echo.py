"""A demo application that answers every request with the request it received, as JSON.

Extensions that change requests (the header-append example) become visible in its
answers, in the order the proxy's filters ran.
"""

from __future__ import annotations

from aiohttp import web

from meshext.server.modules import RunningServer, start_module_server


async def _echo(request: web.Request) -> web.Response:
    body = await request.text()
    return web.json_response(
        {
            "method": request.method,
            "path": request.path_qs,
            "headers": [[name, value] for name, value in request.headers.items()],
            "body": body,
        }
    )


def echo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


async def start_echo_app(host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    return await start_module_server(echo_app(), host, port)
