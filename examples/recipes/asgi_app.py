"""An ASGI app for the uvicorn recipe (docs/recipes.md).

    uvicorn asgi_app:app --fd 3 --app-dir examples/recipes

Plain ASGI, no framework: GET / answers with the process's pid and instance
name as JSON. Its lifespan startup is where a real app would open its
database pool; once that is done it tells supervise it is ready, and its
lifespan shutdown closes the heartbeat. Starlette and FastAPI have the same
hooks (`lifespan=`).
"""

import json
import os

from supervise.worker import Heartbeat


class App:
    def __init__(self) -> None:
        self.heartbeat: Heartbeat | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.http(scope, send)

    async def lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # ... open connection pools, warm caches: whatever "ready" means for this app ...
                self.heartbeat = Heartbeat.from_env()  # inert outside supervise
                self.heartbeat.ready()
                self.heartbeat.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.heartbeat is not None:
                    self.heartbeat.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope, send) -> None:
        body = json.dumps({"pid": os.getpid(), "instance": os.environ.get("SUPERVISE_NAME", "standalone"),
                           "path": scope["path"]}).encode() + b"\n"
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


app = App()
