#!/usr/bin/env python3
"""Middle tier on Python asyncio: an aiohttp server, outbound calls through one aiohttp
ClientSession (its pooled keep-alive connector).

  aio_tier.py IP PORT TO MODE POD

Same contract as go_tier.go: GET /healthz -> "ok"; GET / -> GET http://TO/ (MODE "fwd":
forwarding the incoming X-Virtual-Env header, "plain": not), answers
{"tier", "got_header", "backend", "backend_got_header"} (502 + "error" on failure).
"""
import json
import sys

from aiohttp import ClientSession, ClientTimeout, web


def main():
    if len(sys.argv) != 6:
        sys.exit("usage: aio_tier.py IP PORT TO fwd|plain POD")
    ip, port, to, mode, pod = sys.argv[1:6]

    async def healthz(request):
        return web.Response(text="ok\n")

    async def handle(request):
        inenv = request.headers.get("X-Virtual-Env")
        out = {"tier": pod, "got_header": inenv}
        headers = {"X-Virtual-Env": inenv} if mode == "fwd" and inenv is not None else {}
        try:
            async with request.app["session"].get("http://%s/" % to, headers=headers) as r:
                ans = json.loads(await r.read())
            out["backend"] = ans.get("pod")
            out["backend_got_header"] = ans.get("got_header")
            return web.json_response(out)
        except Exception as e:  # noqa: BLE001
            out["error"] = "%s: %s" % (type(e).__name__, e)
            return web.json_response(out, status=502)

    async def on_startup(app):
        app["session"] = ClientSession(timeout=ClientTimeout(total=5))

    async def on_cleanup(app):
        await app["session"].close()

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", handle)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    web.run_app(app, host=ip, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
