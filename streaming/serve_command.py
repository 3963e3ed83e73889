"""The ``styletalk-live serve`` command (argument parsing, exposure check, logging set-up): load the engine
once, then run :class:`streaming.server.PresenterServer` - page, websocket and WebRTC on one port."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import faulthandler
import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from engine.config import ConfigError, ServerConfig, add_config_arguments, config_from_args
from streaming.allocator import cap_arenas
from streaming.contracts import ServedRuntime
from streaming.janus import JanusUnavailable

if TYPE_CHECKING:
    from streaming.server import PresenterServer

log = logging.getLogger(__name__)

TOKEN_ENV = "STYLETALK_LIVE_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="styletalk-live serve",
        description=(
            "Serve the presenter: open the printed URL in a browser, press Start, allow the microphone "
            "and the avatar speaks with your voice. One port carries the page (HTTP), control and "
            "signaling (websocket, see streaming/PROTOCOL.md) and the media (WebRTC)."
        ),
    )
    net = parser.add_argument_group("server")
    net.add_argument("--host", default=None, help="address to bind (default 127.0.0.1: this machine only)")
    net.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks a free one)")
    net.add_argument(
        "--token",
        default=None,
        help=f"require ?token=... on the page URL (default: ${TOKEN_ENV} if set; prefer the variable, "
        "command lines are visible to other users)",
    )
    net.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding a non-loopback address WITHOUT a token (anyone who can reach the port can use "
        "the engine); without this flag serve refuses to start that way",
    )
    net.add_argument("--max-sessions", type=int, default=None, metavar="N", help="concurrent clients (default 4)")
    net.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name the page may be opened under (repeatable). Without a token the server answers only "
        "to IP addresses and localhost, so that a web page cannot reach it by DNS rebinding",
    )
    net.add_argument(
        "--janus", default=None, metavar="URL",
        help="Janus websocket URL(s), comma-separated (e.g. ws://127.0.0.1:8188): rooms are encoded once and "
        "Janus serves the viewers. Without it viewers get direct WebRTC from this process (at most "
        "server.max_direct_viewers = 3 per room). Janus unreachable at start: serve refuses to start",
    )
    net.add_argument(
        "--rtmp", default=None, metavar="URL",
        help="also push every opened room to this RTMP URL (H.264 + AAC in FLV; '{room}' is replaced by the room "
        "id), e.g. rtmp://127.0.0.1/live/key",
    )
    net.add_argument(
        "--public-url", default=None, metavar="URL",
        help="the base URL viewers reach this node under (http://name:port), used in rooms' watch links; "
        "default: the host name the presenter reached the node by",
    )
    net.add_argument("--web-root", default=None, help=argparse.SUPPRESS)  # development: serve another page
    net.add_argument(
        "--event-loop", choices=("auto", "uvloop", "asyncio"), default="auto",
        help="the event loop that carries every session's media: uvloop (auto: when installed) schedules the "
        "RTP senders and packet handling with less overhead than asyncio's default loop",
    )
    net.add_argument("--verbose", action="store_true",
                     help="also log the WebRTC stack's connection checks (aioice/aiortc; INFO/DEBUG chatter)")
    add_config_arguments(parser)
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: str | None, insecure: bool) -> str | None:
    """Why serving ``host`` this way is refused (None = allowed).

    Loopback is always allowed; any other address (a LAN, ``0.0.0.0``) needs a token, or an explicit
    ``--insecure`` so that exposing the engine to the network is never an accident.
    """
    if _is_loopback(host) or token or insecure:
        return None
    return (
        f"refusing to bind {host} without a token: set ${TOKEN_ENV} (or --token), or pass --insecure to "
        "let anyone who can reach this port use the engine"
    )


SHUTDOWN_TIMEOUT_S = 4.0  # SIGTERM: clients are closed and sessions freed within this, then the process exits


def page_url(server: PresenterServer) -> str:
    """The URL to open: the server's page with its token, URL-encoded so that it works as printed."""
    token = server.settings.token
    return server.url + (f"?{urlencode({'token': token}, quote_via=quote)}" if token else "")


async def serve_until_stopped(
    runtime: ServedRuntime, server_config: ServerConfig, web_root: Path | None = None,
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    """Run the server until SIGINT/SIGTERM; closes every client session on the way out (bounded in time)."""
    from streaming.server import PresenterServer, ServerSettings

    settings = dataclasses.replace(ServerSettings.from_config(server_config), allowed_hosts=tuple(allowed_hosts))
    server = PresenterServer(runtime, settings, web_root)
    await server.start()
    print(f"styletalk-live: serving on {page_url(server)}  (Ctrl+C to stop)", flush=True)
    rooms = server.rooms
    if rooms.fanout is not None:
        print(f"styletalk-live: rooms fan out through Janus at {settings.janus} (up to {settings.max_viewers} "
              "viewers)", flush=True)
    else:
        print(f"styletalk-live: no Janus (--janus URL): rooms use direct WebRTC, at most "
              f"{settings.max_direct_viewers} viewers per room", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-POSIX
            pass
    try:
        await stop.wait()
    finally:
        print(f"styletalk-live: stopping ({server.active_sessions} client(s) connected)", flush=True)
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(server.close(), SHUTDOWN_TIMEOUT_S)
            log.info("clients closed in %.2f s", time.monotonic() - t0)
        except TimeoutError:
            log.warning("clients not closed within %.0f s; exiting anyway", SHUTDOWN_TIMEOUT_S)


CHATTY_LOGGERS = ("aioice", "aiortc")  # log every ICE candidate-pair check at INFO: half of a serve log


def quiet_webrtc_logs(verbose: bool) -> None:
    """At INFO the serve log says what the server does; ICE/RTP detail only with ``--verbose``."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cap_arenas()  # before the engine starts its threads: see streaming/allocator.py
    with contextlib.suppress(AttributeError, ValueError, RuntimeError):  # `kill -USR1 <pid>` dumps every stack
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    quiet_webrtc_logs(args.verbose)
    try:
        config = config_from_args(args)
        overrides = {
            "host": args.host,
            "port": args.port,
            "token": args.token if args.token is not None else os.environ.get(TOKEN_ENV) or None,
            "max_sessions": args.max_sessions,
            "janus": args.janus,
            "rtmp": args.rtmp,
            "public_url": args.public_url,
        }
        chosen = {k: v for k, v in overrides.items() if v is not None}
        config.server = dataclasses.replace(config.server, **chosen)
        config.validate()
    except ConfigError as exc:
        print(f"styletalk-live serve: {exc}", file=sys.stderr)
        return 2
    refusal = check_exposure(config.server.host, config.server.token, args.insecure)
    if refusal is not None:
        print(f"styletalk-live serve: {refusal}", file=sys.stderr)
        return 2
    if not _is_loopback(config.server.host) and not config.server.token:
        log.warning(
            "binding %s without a token (--insecure): anyone who can reach this port can use the engine",
            config.server.host,
        )
    from engine.runtime import EngineRuntime

    log.info("loading the engine (models are loaded once and shared by all sessions)")
    runtime = EngineRuntime.load(config)
    web_root = Path(args.web_root) if args.web_root else None
    try:
        run_loop(serve_until_stopped(runtime, config.server, web_root, tuple(args.allow_host)), args.event_loop)
    except JanusUnavailable as exc:
        print(f"styletalk-live serve: --janus given but Janus is unreachable ({exc}); not starting. Start Janus "
              "(README: janus -F deploy/janus -C deploy/janus/janus.jcfg) or drop --janus for direct WebRTC",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(
            f"styletalk-live serve: cannot listen on {config.server.host}:{config.server.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        t0 = time.monotonic()
        runtime.close()
        log.info("engine closed in %.2f s", time.monotonic() - t0)
    _exit_now(0)
    return 0  # pragma: no cover - _exit_now does not return


def run_loop(coro: Coroutine[Any, Any, None], choice: str = "auto") -> None:
    """Run ``coro`` on uvloop (``auto``: when installed) or on asyncio's default loop."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("styletalk-live serve: --event-loop uvloop: uvloop is not installed") from None
        else:
            log.info("event loop: uvloop")
            uvloop.run(coro)
            return
    asyncio.run(coro)


def _exit_now(code: int) -> None:
    """End the process right after a clean shutdown (every client, peer and session is closed by now).

    Interpreter finalization - the garbage collection and teardown of the engine's heap (torch, dlib, aiortc)
    - took 6-12 s on a loaded 2-core machine, which made ``SIGTERM`` look ignored; nothing left needs it.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
