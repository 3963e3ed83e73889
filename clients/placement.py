"""Place a presenter's room on one of several engine nodes: ``python -m clients.placement URL [URL ...]``.

The mechanism around the pure rule of :mod:`streaming.placement`: read every node's ``/healthz`` (concurrently,
each with a short timeout: a dead node costs the timeout, never a hang), rank them, and connect the presenter to
the first node that admits it. A node that refuses at connect (``server_full``: another presenter took the last
slot since the loads were read) is skipped for the next in rank. There is no coordinator process: every
presenter (or the page that sends it) applies the same rule to the same loads, so nothing extra can fail.

The command prints the placement as JSON (the chosen node, the ranking, the nodes left out and why); the page to
open for the presenter is the chosen node's URL. Exit 1 with the placement error's code when no node can take a
room.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from clients.client import ClientError, StyleTalkClient
from streaming.placement import NodeLoad, Placement, PlacementCode, PlacementError, place_room

HEALTH_TIMEOUT_S = 2.0


def _get_json(url: str, timeout: float) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) URLs of our own nodes
        return json.loads(resp.read(64 << 10))


async def read_load(node_url: str, timeout: float = HEALTH_TIMEOUT_S) -> NodeLoad:
    """One node's load from its ``/healthz``; an unreachable or garbled node gives a :class:`NodeLoad` with
    ``error`` set (placement skips it), never an exception."""
    url = node_url.rstrip("/")
    if urlsplit(url).scheme not in ("http", "https"):
        return NodeLoad.unreachable(node_url, "not an http(s) URL")
    try:
        body = await asyncio.to_thread(_get_json, url + "/healthz", timeout)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        return NodeLoad.unreachable(node_url, f"no /healthz: {exc}")
    return NodeLoad.from_healthz(node_url, body)


async def place(node_urls: list[str], timeout: float = HEALTH_TIMEOUT_S) -> Placement:
    """Read every node's load and apply the rule (:func:`streaming.placement.place_room`)."""
    loads = await asyncio.gather(*(read_load(u, timeout) for u in node_urls))
    return place_room(list(loads))


def ws_url(node_url: str) -> str:
    """``http://host:port`` -> the node's presenter websocket ``ws://host:port/ws``."""
    parts = urlsplit(node_url)
    return f"{'wss' if parts.scheme == 'https' else 'ws'}://{parts.netloc}/ws"


async def connect_placed(ranked: list[str] | tuple[str, ...], token: str | None = None,
                         **client_kwargs: Any) -> tuple[str, StyleTalkClient]:
    """Connect a presenter to the first node in ``ranked`` that admits it: (node URL, connected client).

    ``server_full`` at connect (the node filled up since its load was read) moves on to the next node; any other
    refusal is the caller's to see. :class:`PlacementError` ``nodes_full`` when every node refused.
    """
    refused: list[tuple[str, str]] = []
    for node in ranked:
        client = StyleTalkClient(ws_url(node), token=token, **client_kwargs)
        try:
            await client.connect()
        except ClientError as exc:
            await client.close()
            if exc.code != "server_full":
                raise
            refused.append((node, "server_full at connect"))
            continue
        return node, client
    raise PlacementError(PlacementCode.NODES_FULL, "every ranked node refused the presenter", tuple(refused))


async def _run(args: argparse.Namespace) -> int:
    try:
        placement = await place(args.nodes, args.timeout)
    except PlacementError as exc:
        print(json.dumps({"error": str(exc.code), "message": str(exc),
                          "skipped": [{"url": u, "why": w} for u, w in exc.reasons]}))
        return 1
    print(json.dumps(placement.as_dict()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clients.placement", description=__doc__.split("\n")[0])
    parser.add_argument("nodes", nargs="+", metavar="URL", help="engine nodes' page URLs, http://host:port")
    parser.add_argument("--timeout", type=float, default=HEALTH_TIMEOUT_S,
                        help="seconds to wait for each node's /healthz (default %(default)s)")
    return asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
