#!/usr/bin/env python3
"""A TCP forwarder for the several-hosts test: each argument LISTEN=TARGET
(HOST:PORT=HOST:PORT) accepts on LISTEN and relays every connection to
TARGET. Prints "forwarding" once it listens on all of them."""
import asyncio
import sys


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except Exception:
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def serve(listen, target):
    lhost, lport = listen.rsplit(":", 1)
    thost, tport = target.rsplit(":", 1)

    async def handle(reader, writer):
        try:
            treader, twriter = await asyncio.wait_for(asyncio.open_connection(thost, int(tport)), 5)
        except Exception:
            writer.close()
            return
        await asyncio.gather(pipe(reader, twriter), pipe(treader, writer))

    return await asyncio.start_server(handle, lhost, int(lport), reuse_address=True)


async def main():
    servers = [await serve(*arg.split("=", 1)) for arg in sys.argv[1:]]
    print("forwarding", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
