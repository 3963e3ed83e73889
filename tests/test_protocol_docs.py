"""One control message, one home: every request type has a handler and a row in PROTOCOL.md; every event and
error code the server or engine can send is documented there."""

from __future__ import annotations

import re
from pathlib import Path

from engine.live.events import EventCode
from streaming import protocol as P
from streaming.client_handler import HANDLERS

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "streaming" / "PROTOCOL.md").read_text(encoding="utf-8")


def _table_keys(heading: str) -> set[str]:
    """The backticked names in the first column of the tables under ``heading`` (up to the next heading)."""
    start = DOC.index(heading)
    end = DOC.find("\n## ", start + len(heading))
    section = DOC[start : end if end != -1 else None]
    keys: set[str] = set()
    for line in section.splitlines():
        m = re.match(r"\|\s*(`[^|]+)\|", line)
        if m:
            keys.update(re.findall(r"`([a-z0-9_]+)`", m.group(1)))
    return keys


def test_every_request_registers_itself_has_a_handler_and_a_row() -> None:
    assert set(P.REQUEST_TYPES.values()) == set(HANDLERS), "requests and server handlers differ"
    assert set(P.REQUEST_TYPES) <= _table_keys("## Requests")


def test_every_error_and_event_code_is_documented() -> None:
    assert {str(c) for c in P.ErrorCode} <= _table_keys("## Error codes")
    envelope = _table_keys("## Message envelope")
    assert {str(c) for c in EventCode} <= envelope
    server_src = "".join((ROOT / "streaming" / f).read_text(encoding="utf-8")
                         for f in ("server.py", "client_handler.py"))
    sent = set(re.findall(r'P\.event\(\s*"([a-z_]+)"', server_src))
    sent |= {"info", "warning", "error"}  # engine events are forwarded under their type
    assert sent and sent <= envelope, sent - envelope


def test_a_request_class_registers_once() -> None:
    import dataclasses

    import pytest

    with pytest.raises(TypeError, match="defined twice"):
        @dataclasses.dataclass(frozen=True)
        class Again(P.Request):
            TYPE = "ping"
    assert P.REQUEST_TYPES["ping"] is P.Ping
