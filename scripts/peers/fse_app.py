"""fastapi-sse-events 0.2.0 as scripts/bench-peers runs it: its documented
subscribe endpoint, and a publish endpoint calling its broker."""
import os

from fastapi import Request
from fastapi_sse_events import SSEApp, subscribe_to_events

app = SSEApp(redis_url=os.environ["REDIS_URL"])


@app.get("/events")
@subscribe_to_events()
async def events(request: Request):
    pass


@app.post("/publish")
async def publish(request: Request):
    body = await request.json()
    await app.state.broker.publish(body["topic"], body.get("event", "message"), body["data"])
    return {"ok": True}
