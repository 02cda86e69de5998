"""The API's listening sockets: answers go out at once, not after the client's delayed acknowledgement."""

from __future__ import annotations

import asyncio
import socket

from orchestrator.cli import _listen


async def test_connections_to_the_api_send_without_waiting_for_acknowledgements() -> None:
    # Nagle's algorithm on an accepted connection holds a response's second write (its body) until the client
    # acknowledges the first (its headers), which clients delay by up to 40 ms: every answer came 40 ms late.
    listening = _listen("127.0.0.1", 0)
    nodelay: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection: socket.socket = writer.get_extra_info("socket")
        nodelay.set_result(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(accepted, sock=listening)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listening.getsockname()[1])
        assert await asyncio.wait_for(nodelay, 5) == 1
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
