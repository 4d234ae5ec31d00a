"""A TCP relay that delays every byte by a fixed time in each direction.

``bench/pg-read-preference`` uses it to put the PostgreSQL primary "far
away" when the kernel has no ``sch_netem`` (``tc qdisc ... netem`` fails
with "Specified qdisc kind is unknown", as in some sandboxes): latency is
added in user space instead, on loopback only. Bytes keep their order;
bandwidth is not limited.

It also counts round trips: a *flight* is what a client sends before the
server answers (a new flight starts when the client sends after the server
spoke, or first on a connection). Each line written to the relay's stdin
is answered on its stdout with ``flights N``, the total so far over every
connection: a bench reads it before and after a request.

    python bench/delay_proxy.py LISTEN_PORT TARGET_PORT ONE_WAY_MS
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time

#: Client-to-server flights over every connection (see the docstring).
flights = 0


async def pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    turn: list[bool],
    from_client: bool,
) -> None:
    """Copy ``reader`` to ``writer`` ``delay`` seconds late. ``turn[0]`` is
    whether the server spoke last on this connection (shared by its two
    pipes): a client chunk after it starts a flight."""
    global flights
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                writer.close()
                return
            writer.write(chunk)
            await writer.drain()

    sender = asyncio.ensure_future(send())
    try:
        while True:
            chunk = await reader.read(65536)
            if chunk:
                if from_client and turn[0]:
                    flights += 1
                turn[0] = not from_client
            queue.put_nowait((time.monotonic() + delay, chunk))
            if not chunk:
                break
        await sender
    except (ConnectionError, asyncio.CancelledError):
        sender.cancel()
        writer.close()


def report() -> None:
    """Answer each line on stdin with the flight count (a thread: reading an
    int the event loop writes is safe)."""
    for _ in sys.stdin:
        print(f"flights {flights}", flush=True)


async def main(listen: int, target: int, one_way_ms: float) -> None:
    delay = one_way_ms / 1000.0

    async def accept(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        turn = [True]
        await asyncio.gather(
            pipe(client_reader, server_writer, delay, turn, True),
            pipe(server_reader, client_writer, delay, turn, False),
            return_exceptions=True,
        )

    server = await asyncio.start_server(accept, "127.0.0.1", listen)
    threading.Thread(target=report, daemon=True).start()
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
