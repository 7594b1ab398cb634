"""A minimal, fast fake FCM for the end-to-end benches: it serves an OAuth token to anyone,
answers every `messages:send` with 200 at once, and notes when each message arrived
(time.monotonic(), the same clock in every process of this machine).

Messages are grouped by run: the part of the device token before the first ":" (the benches
name tokens "<run>:<n>"), so that asking how far a run got costs nothing per message.

    GET /runs/{run}             {"count": n, "first": t, "last": t}
    GET /runs/{run}/arrivals    {"arrivals": [[token, t], ...]}, first arrival of each message
    GET /runs/{run}/stages      {stage: {"messages": n, "devices": d, "duplicates": n - d}},
                                by the `relance_stage` data field relance puts on each message

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
        # run -> stage -> distinct tokens, and messages: "exactly once per stage" is countable.
        self.stage_tokens: dict[str, dict[str, set[str]]] = {}
        self.stage_messages: dict[str, dict[str, int]] = {}

    async def token(self, request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(
            {"access_token": "ya29.bench", "expires_in": 3599, "token_type": "Bearer"}
        )

    async def send(self, request: web.Request) -> web.Response:
        message = json.loads(await request.read())["message"]
        now = time.monotonic()
        token = message["token"]
        run = token.split(":", 1)[0]
        self.runs.setdefault(run, []).append((token, now))
        self.total += 1
        stage = message.get("data", {}).get("relance_stage")
        if stage is not None:
            self.stage_tokens.setdefault(run, {}).setdefault(stage, set()).add(token)
            counts = self.stage_messages.setdefault(run, {})
            counts[stage] = counts.get(stage, 0) + 1
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

    async def stages(self, request: web.Request) -> web.Response:
        run = request.match_info["run"]
        tokens, messages = self.stage_tokens.get(run, {}), self.stage_messages.get(run, {})
        return web.json_response(
            {
                stage: {
                    "messages": messages[stage],
                    "devices": len(tokens[stage]),
                    "duplicates": messages[stage] - len(tokens[stage]),
                }
                for stage in sorted(messages)
            }
        )


def app() -> web.Application:
    arrivals = Arrivals()
    application = web.Application(client_max_size=1 << 20)
    application.router.add_post("/token", arrivals.token)
    application.router.add_post("/v1/projects/{project}/messages:send", arrivals.send)
    application.router.add_get("/runs/{run}", arrivals.summary)
    application.router.add_get("/runs/{run}/arrivals", arrivals.arrivals)
    application.router.add_get("/runs/{run}/stages", arrivals.stages)
    return application


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, access_log=None, print=None)
