#!/usr/bin/env python3
"""A userspace TCP link emulator: listens on an address, forwards every connection to a target, and holds
each chunk of bytes for a one-way delay (and, optionally, the serialisation time at a link rate) in each
direction before passing it on. Bytes are never reordered, merged across connections or altered, so any
protocol (gRPC / HTTP/2 included) works through it. End of stream is delayed like data (a FIN arrives one
delay after the last byte); a reset or error on either side closes both sides.

This is the delay source where the kernel has no netem (`tc qdisc ... netem` fails).

    scripts/delay-proxy.py --listen 127.0.0.1:23790 --target 10.201.0.2:2379 --delay-ms 200 \
        [--rate-kbps 1000] [--control 127.0.0.1:23791]

The link can be changed while it runs through the optional control port, one command per line, one reply line
each (`ok ...` or `error ...`):

    delay MS        one-way delay for bytes read from now on (both directions)
    rate KBPS       link rate per direction per connection, 0 = unlimited
    show            current settings and open connections

e.g. `exec 3<>/dev/tcp/127.0.0.1/23791; echo 'delay 200' >&3; read -r reply <&3`. A change applies to chunks
read after it; chunks already held keep their release time (order is preserved either way). Standard library
only (Python 3.8+). Prints "delay-proxy listening on ADDR" once it accepts connections.
"""

import argparse
import asyncio
import signal
import socket
import sys
import time

CHUNK = 64 * 1024
# Bytes one direction of one connection may hold before the proxy stops reading from the sender (back-pressure
# instead of unbounded memory).
MAX_HELD = 16 * 1024 * 1024


class Link:
    """The settings every connection reads per chunk."""

    def __init__(self, delay_ms, rate_kbps):
        self.delay_s = delay_ms / 1000.0
        self.rate_bps = rate_kbps * 1000.0
        self.connections = 0
        self.total = 0

    def describe(self):
        return "delay_ms=%g rate_kbps=%g connections=%d accepted=%d" % (
            self.delay_s * 1000,
            self.rate_bps / 1000,
            self.connections,
            self.total,
        )


def split_address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("%r is not HOST:PORT" % text)
    return host.strip("[]") or "127.0.0.1", int(port)


async def pipe(link, reader, writer, name, verbose):
    """Copies reader -> writer with the link's delay. Returns normally at end of stream; raises on error."""
    held = asyncio.Queue()
    held_bytes = 0
    room = asyncio.Event()
    room.set()
    # When the last byte of the previous chunk finishes "transmitting" at the link rate.
    link_free = 0.0

    async def receive():
        nonlocal held_bytes, link_free
        while True:
            await room.wait()
            data = await reader.read(CHUNK)
            now = time.monotonic()
            if link.rate_bps > 0 and data:
                link_free = max(now, link_free) + len(data) * 8 / link.rate_bps
                sent = link_free
            else:
                sent = now
            # deliver() releases chunks strictly in arrival order, so order holds even when the delay shrinks.
            await held.put((sent + link.delay_s, data))
            if not data:
                return
            held_bytes += len(data)
            if held_bytes >= MAX_HELD:
                room.clear()

    async def deliver():
        nonlocal held_bytes
        while True:
            release, data = await held.get()
            wait = release - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                await writer.drain()
                return
            writer.write(data)
            await writer.drain()
            held_bytes -= len(data)
            if held_bytes < MAX_HELD:
                room.set()

    receiver = asyncio.ensure_future(receive())
    deliverer = asyncio.ensure_future(deliver())
    try:
        # deliver() ends after forwarding end of stream; receive() has ended before it (it queued the EOF).
        # If either fails, the other is cancelled and the error propagates.
        done, _ = await asyncio.wait({receiver, deliverer}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        await deliverer
    finally:
        for task in (receiver, deliverer):
            if not task.done():
                task.cancel()
        if verbose:
            print("delay-proxy: %s done" % name, file=sys.stderr, flush=True)


async def handle(link, target, verbose, client_reader, client_writer):
    peer = client_writer.get_extra_info("peername")
    link.connections += 1
    link.total += 1
    server_writer = None
    try:
        try:
            server_reader, server_writer = await asyncio.open_connection(*target)
        except OSError as e:
            if verbose:
                print("delay-proxy: %s: cannot reach %s:%d: %s" % (peer, target[0], target[1], e),
                      file=sys.stderr, flush=True)
            return
        # No Nagle: small writes (HTTP/2 pings, acks) must not wait for an ACK on top of the emulated delay.
        for w in (client_writer, server_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
        up = asyncio.ensure_future(pipe(link, client_reader, server_writer, "%s up" % (peer,), verbose))
        down = asyncio.ensure_future(pipe(link, server_reader, client_writer, "%s down" % (peer,), verbose))
        # Both directions run until each has forwarded its end of stream (half-close is kept), or until one
        # fails, which closes both sides.
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if t.exception() is not None]
        if failed:
            for t in pending:
                t.cancel()
            if verbose:
                print("delay-proxy: %s: %r" % (peer, failed[0].exception()), file=sys.stderr, flush=True)
        elif pending:
            await asyncio.wait(pending)
    except asyncio.CancelledError:
        pass
    finally:
        link.connections -= 1
        for w in (client_writer, server_writer):
            if w is None:
                continue
            try:
                w.close()
            except Exception:
                pass
        # Reap both transports; a peer that already reset makes wait_closed raise, which is fine.
        for w in (client_writer, server_writer):
            if w is None:
                continue
            try:
                await w.wait_closed()
            except Exception:
                pass


async def control(link, reader, writer):
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            words = line.decode("utf-8", "replace").split()
            if not words:
                continue
            try:
                if words[0] == "delay" and len(words) == 2:
                    link.delay_s = max(0.0, float(words[1])) / 1000.0
                elif words[0] == "rate" and len(words) == 2:
                    link.rate_bps = max(0.0, float(words[1])) * 1000.0
                elif words[0] != "show" or len(words) != 1:
                    raise ValueError("unknown command %r (delay MS | rate KBPS | show)" % " ".join(words))
                reply = "ok " + link.describe()
                print("delay-proxy: " + reply, file=sys.stderr, flush=True)
            except ValueError as e:
                reply = "error %s" % e
            writer.write((reply + "\n").encode())
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", type=split_address, required=True, help="HOST:PORT to accept on")
    parser.add_argument("--target", type=split_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per direction (ms)")
    parser.add_argument("--rate-kbps", type=float, default=0.0,
                        help="link rate per direction per connection, kbit/s (0: unlimited)")
    parser.add_argument("--control", type=split_address, help="HOST:PORT of a control port (see the doc)")
    parser.add_argument("--verbose", action="store_true", help="log connections to stderr")
    args = parser.parse_args()
    if args.delay_ms < 0 or args.rate_kbps < 0:
        parser.error("--delay-ms and --rate-kbps must not be negative")

    link = Link(args.delay_ms, args.rate_kbps)
    server = await asyncio.start_server(
        lambda r, w: handle(link, args.target, args.verbose, r, w), args.listen[0], args.listen[1]
    )
    servers = [server]
    if args.control:
        servers.append(await asyncio.start_server(lambda r, w: control(link, r, w), *args.control))

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))

    bound = server.sockets[0].getsockname()
    print("delay-proxy listening on %s:%d -> %s:%d (%s)" % (bound[0], bound[1], args.target[0], args.target[1],
                                                            link.describe()), flush=True)
    await stop
    for s in servers:
        s.close()
    # Close every open connection (both sides) before exiting.
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
