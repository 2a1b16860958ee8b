"""Holds idle keep-alive connections open on a server, for the benchmark's idle phase.

    python3 bench/idle.py HOST PORT COUNT plain|tls|tls-no-alpn [PATH]

Opens COUNT connections (TLS 1.3 when `tls` or `tls-no-alpn`, certificates unchecked: a
throwaway one on localhost; ALPN offers `http/1.1`, or nothing with `tls-no-alpn`), sends
one `GET PATH` (`/` by default) on each and reads its whole response, prints `held N` (the
connections answered 200 and still open), then keeps them open and idle until stdin
closes or it is killed.
"""
import asyncio
import ssl
import sys


async def one(host, port, path, ctx, opened, gate):
    async with gate:
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if ctx else None)
            writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if b" 200 " not in head.split(b"\r\n")[0]:
                return
            opened.append(writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            return


async def main():
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    path = sys.argv[5] if len(sys.argv) > 5 else "/"
    ctx = None
    if len(sys.argv) > 4 and sys.argv[4] in ("tls", "tls-no-alpn"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if sys.argv[4] == "tls":
            ctx.set_alpn_protocols(["http/1.1"])
    opened = []
    gate = asyncio.Semaphore(256)
    await asyncio.gather(*(one(host, port, path, ctx, opened, gate) for _ in range(count)))
    print(f"held {len(opened)}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for w in opened:
        w.close()


asyncio.run(main())
