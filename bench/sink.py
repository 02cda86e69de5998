"""A fast HTTP sink in its own process (aiohttp): counts requests and the latency each message carries.

POST /ingest  any body; a JSON body with uplink_message.decoded_payload.sent (time.monotonic() when the
              publisher sent it) yields a latency sample (CLOCK_MONOTONIC is shared by processes).
GET  /stats   {"count", "first", "last", "latencies", "duplicates"}; POST /reset clears.
"""

from __future__ import annotations

import json
import sys
import time

from aiohttp import web

state: dict[str, object] = {}


seen: set[int] = set()


def reset() -> None:
    seen.clear()
    state.update(count=0, first=0.0, last=0.0, latencies=[], duplicates=0)


async def ingest(request: web.Request) -> web.Response:
    body = await request.read()
    now = time.monotonic()
    count = int(state["count"]) + 1  # type: ignore[call-overload]
    state["count"] = count
    if count == 1:
        state["first"] = now
    state["last"] = now
    try:
        decoded = json.loads(body)["uplink_message"]["decoded_payload"]
        state["latencies"].append(now - float(decoded["sent"]))  # type: ignore[attr-defined]
        if decoded["n"] in seen:
            state["duplicates"] = int(state["duplicates"]) + 1  # type: ignore[call-overload]
        seen.add(decoded["n"])
    except (ValueError, KeyError, TypeError):
        pass
    return web.Response(status=204)


async def stats(_: web.Request) -> web.Response:
    return web.json_response(state)


async def do_reset(_: web.Request) -> web.Response:
    reset()
    return web.Response(status=204)


def main() -> None:
    """`python -m bench.sink PORT`."""
    reset()
    app = web.Application()
    app.add_routes([web.post("/ingest", ingest), web.get("/stats", stats), web.post("/reset", do_reset)])
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
