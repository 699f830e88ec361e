"""A reminder service on asyncio: schedule, cancel and, on shutdown, rescue reminders.

Run: python examples/asyncio_service.py   (it drives itself and ends in a few seconds)

A tiny HTTP API on ``asyncio.start_server`` (the handlers would look the same in
aiohttp or FastAPI):

* ``POST /reminders/<id>?in=<seconds>&text=<text>`` schedules a reminder (a time bomb);
* ``DELETE /reminders/<id>`` cancels it (a drain);
* on shutdown, reminders still pending are rescued into a JSON-lines file and
  filled back (``replay``) when the service starts again.

The ``async def`` hook runs on the service's own loop, so it uses the
service's loop-bound objects directly (here an ``asyncio.Queue`` outbox and an
``asyncio.Lock``; in a real service the aiohttp ``ClientSession``).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gobucket import (
    AsyncTaskBucket,
    BucketConfig,
    DuplicateTaskError,
    Executor,
    JsonlRescueSink,
    TaskContext,
    TaskNotFoundError,
    TaskType,
    replay,
)


class Reminders(Executor):
    """Sends a due reminder through the service's outbox (objects bound to its loop)."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.lock = asyncio.Lock()  # stands for the app's session, pool, rate limiter, ...

    async def on_execute(self, ctx: TaskContext, id: str, data: Any) -> None:
        async with self.lock:
            await self.outbox.put(f"reminder {id}: {data['text']}")

    async def on_panic(self, ctx: TaskContext, id: str, data: Any) -> None:
        print(f"  shutdown: {id} rescued (its record goes to the rescue file)")


class Service:
    """The HTTP side: one request per connection, plain text answers."""

    def __init__(self, bucket: AsyncTaskBucket) -> None:
        self.bucket = bucket

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = (await reader.readline()).decode().split()
        while (await reader.readline()).strip():
            pass  # headers
        status, body = await self.route(request[0], request[1])
        writer.write(f"HTTP/1.0 {status}\r\n\r\n{body}".encode())
        await writer.drain()
        writer.close()

    async def route(self, method: str, target: str) -> tuple[str, str]:
        url = urlsplit(target)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        task_id = url.path.removeprefix("/reminders/")
        try:
            if method == "POST":
                await self.bucket.fill(
                    TaskType.TIME_BOMB,
                    task_id,
                    {"text": query.get("text", "")},
                    run_after=float(query.get("in", "1")),
                )
                return "201 Created", f"scheduled {task_id}"
            if method == "DELETE":
                await self.bucket.drain(task_id)
                return "200 OK", f"cancelled {task_id}"
        except DuplicateTaskError:
            return "409 Conflict", f"{task_id} is already scheduled"
        except TaskNotFoundError:
            return "404 Not Found", f"no pending reminder {task_id}"
        return "405 Method Not Allowed", ""


async def http(port: int, method: str, target: str) -> str:
    """A one-line HTTP client (stands for the service's users)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {target} HTTP/1.0\r\n\r\n".encode())
    answer = (await reader.read()).decode()
    writer.close()
    return answer.split("\r\n")[0] + " | " + answer.split("\r\n\r\n", 1)[1]


async def run_service(rescue_file: Path, script: list[tuple[str, str]], wait: float) -> None:
    """Start the service, replay what the last run rescued, send ``script``, shut down."""
    config = BucketConfig(name="reminders", life_span=60.0, max_bucket=1000)
    executor = Reminders()
    sink = JsonlRescueSink(rescue_file)
    async with AsyncTaskBucket(config, executor, rescue_sink=sink) as bucket:
        replayed = await asyncio.to_thread(replay, sink, bucket.sync)
        print(f"  started: {replayed} reminder(s) replayed from the last run")
        server = await asyncio.start_server(Service(bucket).handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            for method, target in script:
                print(f"  {method} {target} -> {await http(port, method, target)}")
            deadline = asyncio.get_running_loop().time() + wait
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                with contextlib.suppress(TimeoutError):
                    print(f"  sent: {await asyncio.wait_for(executor.outbox.get(), left)}")
        print(f"  shutting down with {len(bucket)} reminder(s) pending")
    # leaving the block closed the bucket: pending reminders were rescued into the file


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rescue_file = Path(tmp) / "reminders.jsonl"
        print("first run:")
        first = [
            ("POST", "/reminders/tea?in=0.5&text=put+the+kettle+on"),
            ("POST", "/reminders/call?in=1&text=call+Ann"),
            ("POST", "/reminders/call?in=1&text=twice"),
            ("DELETE", "/reminders/call"),
            ("DELETE", "/reminders/nothing"),
            ("POST", "/reminders/report?in=2&text=send+the+report"),
        ]
        asyncio.run(run_service(rescue_file, first, wait=1.0))
        print("second run:")
        asyncio.run(run_service(rescue_file, [], wait=2.0))


if __name__ == "__main__":
    main()
