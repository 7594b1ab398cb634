"""A minimal, fast fake FCM for the end-to-end benches: it serves an OAuth token to anyone,
answers every `messages:send` with 200 at once, and notes when each message arrived
(time.monotonic(), the same clock in every process of this machine).

Messages are grouped by run: the part of the device token before the first ":" (the benches
name tokens "<run>:<n>"), so that asking how far a run got costs nothing per message.

    GET /runs/{run}             {"count": n, "first": t, "last": t}
    GET /runs/{run}/arrivals    {"arrivals": [[token, t], ...]}, first arrival of each message

Run: python bench/fake_fcm.py --port 8765 (the benches start it for you, in its own process,
so that it never shares an event loop with what it measures)."""

import argparse
import json
import time

from aiohttp import web


class Arrivals:
    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[str, float]]] = {}
        self.total = 0

    async def token(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"access_token": "ya29.bench", "expires_in": 3599, "token_type": "Bearer"}
        )

    async def send(self, request: web.Request) -> web.Response:
        message = json.loads(await request.read())["message"]
        now = time.monotonic()
        token = message["token"]
        self.runs.setdefault(token.split(":", 1)[0], []).append((token, now))
        self.total += 1
        name = f"projects/{request.match_info['project']}/messages/0:{self.total}"
        return web.json_response({"name": name})

    async def summary(self, request: web.Request) -> web.Response:
        got = self.runs.get(request.match_info["run"], [])
        first, last = (got[0][1], got[-1][1]) if got else (None, None)
        return web.json_response({"count": len(got), "first": first, "last": last})

    async def arrivals(self, request: web.Request) -> web.Response:
        seen: dict[str, float] = {}
        for token, at in self.runs.get(request.match_info["run"], []):
            seen.setdefault(token, at)
        return web.json_response({"arrivals": list(seen.items())})


def app() -> web.Application:
    arrivals = Arrivals()
    application = web.Application(client_max_size=1 << 20)
    application.router.add_post("/token", arrivals.token)
    application.router.add_post("/v1/projects/{project}/messages:send", arrivals.send)
    application.router.add_get("/runs/{run}", arrivals.summary)
    application.router.add_get("/runs/{run}/arrivals", arrivals.arrivals)
    return application


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, access_log=None, print=None)
