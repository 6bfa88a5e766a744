"""Guards on the server's sockets, so that idle or slow connections cannot lock good clients out: a deadline for
each request head, a cap on open connections, and an open-files limit that fits the cap."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from typing import Any

__all__ = ["guarded_h11_protocol"]

logger = logging.getLogger(__name__)


def guarded_h11_protocol(max_connections: int, header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol (`uvicorn.Config(http=...)`) with two guards against idle and slow sockets:

    - a connection must send a complete request head within `header_timeout` seconds of opening, or of the end of
      its previous response (a kept-alive connection, or one still sending a body the server did not read); else it
      is closed without an answer;
    - at most `max_connections` are open: past that, a new connection closes the oldest one that is waiting for a
      request head, or, when every connection is busy with a request, is answered 503 and closed.

    The state is per server: each call makes a new class.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    hooks = ("connection_made", "data_received", "on_response_complete", "connection_lost")
    if not all(callable(getattr(H11Protocol, name, None)) for name in hooks) or \
            not {"cycle", "conn", "transport", "loop"} <= set(H11Protocol.__init__.__code__.co_names) | \
            set(H11Protocol.connection_made.__code__.co_names):
        logger.warning("this uvicorn's h11 protocol is not the one the connection guards were written for: serving "
                       "without --max-connections and --header-timeout (put a reverse proxy in front)")
        return H11Protocol
    waiting: dict[Any, None] = {}  # connections waiting for a request head, oldest first
    live: set[Any] = set()  # open connections that are not being closed
    message = (f"the server has {max_connections} connections open, each busy with a request (--max-connections): "
               "retry later")
    body = json.dumps({"error": {"message": message, "type": "server_busy", "param": None,
                                 "code": "too_many_connections"}}).encode()
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))

    class GuardedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(live) >= max_connections:
                oldest = next(iter(waiting), None)
                if oldest is None:
                    logger.warning("refused a connection: %d open, each busy with a request (--max-connections)",
                                   len(live))
                    transport.write(busy)
                    transport.close()
                    return
                oldest._close("it was the oldest waiting for a request head, and --max-connections was reached")
            live.add(self)
            self._follow()

        def data_received(self, data: bytes) -> None:
            if self in live:
                super().data_received(data)
                self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            live.discard(self)
            super().connection_lost(exc)

        def _follow(self) -> None:
            """Start the head timer when the connection has no request in progress; stop it when one has begun."""
            idle = (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing()
            if idle and self not in waiting:
                waiting[self] = None
                self._timer = self.loop.call_later(header_timeout, self._close,
                                                   f"it sent no complete request head within {header_timeout:g} s "
                                                   "(--header-timeout)")
            elif not idle and self in waiting:
                self._stop_waiting()

        def _stop_waiting(self) -> None:
            waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _close(self, why: str) -> None:
            self._stop_waiting()
            live.discard(self)
            if not self.transport.is_closing():
                with contextlib.suppress(h11.LocalProtocolError):
                    self.conn.send(h11.ConnectionClosed())
                self.transport.close()
            logger.info("closed a connection: %s", why)

    return GuardedH11Protocol



def _raise_open_files_limit(needed: int) -> None:
    """Raise the soft limit of open files to `needed` if it is lower (the hard limit permitting), so that
    --max-connections sockets never make accept() fail."""
    try:
        import resource
    except ImportError:  # not Unix
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        print(f"warning: --max-connections needs about {needed} open files and this process may open {soft} "
              "(ulimit -n): lower --max-connections", file=sys.stderr, flush=True)

