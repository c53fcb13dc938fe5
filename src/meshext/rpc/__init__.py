"""meshext's gRPC server for streaming calls: HTTP/2 framing, calls, TLS."""

from meshext.rpc.call import EOF, CallAborted, CallClosed, ServerCall
from meshext.rpc.connection import Limits
from meshext.rpc.server import Method, RpcServer, RpcServerError
from meshext.rpc.status import Status

__all__ = [
    "EOF",
    "CallAborted",
    "CallClosed",
    "Limits",
    "Method",
    "RpcServer",
    "RpcServerError",
    "ServerCall",
    "Status",
]
