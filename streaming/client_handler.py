"""One websocket client of the presenter server: its live session, its media peer, and its requests.

Every request type is answered by one ``ClientHandler`` method registered in :data:`HANDLERS` (``@_handles``);
``dispatch`` looks the handler up, so adding a request is one class in :mod:`streaming.protocol`, one method
here and one row in ``PROTOCOL.md`` (``tests/test_protocol_docs.py`` checks all three agree).

Isolation: each client's messages are handled in its own task and every failure is caught at this client's
boundary (an error reply, or at worst closing this client); a closing socket releases the peer, the session's
tasks/threads and its engine slot, in a clean-up task owned by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from engine.config import parse_playout_delay
from streaming import protocol as P
from streaming.contracts import ServedSession
from streaming.uploads import (
    DecoderFailed,
    avatar_errors,
    clip_errors,
    decode_avatar,
    decode_clip,
    extract_video_clip,
)
from streaming.webrtc import MediaPeer

if TYPE_CHECKING:
    from streaming.server import PresenterServer

log = logging.getLogger("streaming.server")  # one logger name for the whole server (log filters rely on it)

CLEANUP_TIMEOUT_S = 15.0  # freeing one client (peer close <= 5 s, session threads <= 5 s) never takes longer


class SessionRefused(RuntimeError):
    """The engine refused to create a session (its own limit); the client is told ``server_full``."""


Handler = Callable[["ClientHandler", Any], Awaitable[dict[str, Any]]]
HANDLERS: dict[type[P.Request], Handler] = {}  # request class -> ClientHandler method answering it


def _handles(request_type: type[P.Request]) -> Callable[[Handler], Handler]:
    """Register the decorated ``ClientHandler`` method as the answer to ``request_type``."""

    def register(fn: Handler) -> Handler:
        if request_type in HANDLERS:
            raise TypeError(f"{request_type.TYPE} has two handlers")
        HANDLERS[request_type] = fn
        return fn

    return register


class ClientHandler:
    """One websocket client: its live session, its media peer, and the dispatch of its requests."""

    def __init__(self, server: PresenterServer, ws: ServerConnection, client_id: str) -> None:
        self.server = server
        self.ws = ws
        self.id = client_id
        self.session: ServedSession | None = None
        self.session_started = False
        self.peer: MediaPeer | None = None
        # The client's choices, re-applied when a hangup replaces the session with a fresh one.
        self.style: str | None = None
        self.intensity: float | None = None
        self.avatar: np.ndarray | None = None
        self.uploaded: dict[str, np.ndarray] = {}  # name -> style code (encoded once, on upload)
        self.uploaded_clips: dict[str, tuple[np.ndarray, dict[str, Any]]] = {}  # name -> (clip, origin): save_style
        self._extraction: asyncio.Task[None] | None = None  # a style video being extracted (one at a time)
        self._events_task: asyncio.Task[None] | None = None
        self._aux_tasks: set[asyncio.Task[Any]] = set()
        self._releases: set[asyncio.Task[None]] = set()  # this client's clean-ups (owned by the server)
        # one replacement of the session at a time: a hangup and the peer's own "closed" (the page closes its
        # peer, then sends hangup) would otherwise both build a session under this client's id
        self._replacing = asyncio.Lock()
        self.closing = False  # the websocket is gone: no new session may be created any more
        self.requests = 0
        self.errors = 0
        self.limiter = P.RateLimiter(server.settings.rate_limit_per_s, server.settings.rate_limit_burst)
        self.upload_limiter = P.RateLimiter(server.settings.upload_rate_per_s, server.settings.upload_burst)

    # -------------------------------------------------------------------------------------------- life cycle
    async def _new_session(self) -> None:
        """Create a fresh (not yet started) live session, re-applying this client's choices to it.

        Built in a worker thread: a session owns a recognizer whose set-up (model files) takes ~0.5 s, which
        must not stall the other clients' media on the event loop. If this coroutine is cancelled while the
        thread runs (the client left), the session the thread still builds is freed when it is ready instead
        of holding its slot forever.
        """
        if self.closing:
            raise ConnectionClosed(None, None)
        runtime = self.server.runtime
        # admission (max_sessions) happens in the engine's session registry, atomically, and nowhere else
        future = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(runtime.new_session, self.id, max_sessions=self.server.settings.max_sessions)
        )
        try:
            session = await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(self._free_orphan)
            raise
        except RuntimeError as exc:
            raise SessionRefused(str(exc)) from exc
        if self.closing:  # the client left while the session was built: never hand it out
            self._release_later(None, None, session)
            raise ConnectionClosed(None, None)
        self.session = session
        self.session_started = False
        for name, code in self.uploaded.items():
            if name not in session.styles:
                session.styles.add_code(name, code)
        if self.intensity is not None:
            session.set_intensity(self.intensity)
        if self.style is not None:
            session.set_style(self.style, 0)
        events = session.events
        while not events.empty():  # re-applying the client's choices is not news to the client
            events.get_nowait()
        self._events_task = asyncio.get_running_loop().create_task(self._forward_events(events))

    def _free_orphan(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None:
            self._release_later(None, None, future.result())

    async def _close_media(self) -> None:
        """Free the peer and the session (tasks, threads, queues, the engine slot).

        The freeing runs in a task owned by the server: a caller cancelled halfway (the client's websocket
        closed during a drop, server shutdown) cannot leave a half-closed peer or a session that still holds
        its engine slot; the caller waits for it unless it is itself cancelled.
        """
        peer, self.peer = self.peer, None
        session, self.session = self.session, None
        task, self._events_task = self._events_task, None
        self.session_started = False
        if peer is None and session is None and task is None:
            return
        await asyncio.shield(self._release_later(peer, task, session))

    def _release_later(
        self, peer: MediaPeer | None, task: asyncio.Task[None] | None, session: ServedSession | None
    ) -> asyncio.Task[None]:
        release = self.server.own(self._release(peer, task, session), name=f"release-{self.id}")
        self._releases.add(release)
        release.add_done_callback(self._releases.discard)
        return release

    async def _release(
        self, peer: MediaPeer | None, task: asyncio.Task[None] | None, session: ServedSession | None
    ) -> None:
        try:
            if task is not None:
                task.cancel()
            if peer is not None:
                try:
                    await peer.close()
                except Exception:  # noqa: BLE001 - the session below must be freed anyway
                    log.exception("client %s: closing the peer connection failed", self.id)
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if session is not None:
                await session.close()
        finally:
            if session is not None:  # whatever happened above, the engine slot is given back
                self.server.runtime.forget(self.id, session)

    async def run(self) -> None:
        await self._new_session()
        await self.send(
            P.event(
                "welcome",
                session=self.id,
                protocol=P.PROTOCOL_VERSION,
                styles=self.live.list_styles(),
                limits={
                    "max_message_bytes": self.server.limits.max_message_bytes,
                    "max_upload_bytes": self.server.limits.max_upload_bytes,
                },
            )
        )
        async for raw in self.ws:
            await self.handle_raw(raw)

    async def close(self) -> None:
        """The websocket is gone: free everything this client holds, and wait until it is free.

        A drop in flight (the peer connection closed first) is let finish its clean-up rather than cancelled
        halfway; ``closing`` stops it from creating a replacement session.
        """
        self.closing = True
        await self.server.rooms.owner_left(self)  # its room closes: viewers are told
        pending = set(self._aux_tasks)
        if pending:
            await asyncio.wait(pending, timeout=CLEANUP_TIMEOUT_S)
            for task in pending:
                task.cancel()
        await self._close_media()
        if self._releases:
            done, stuck = await asyncio.wait(set(self._releases), timeout=CLEANUP_TIMEOUT_S)
            if stuck:
                log.warning("client %s: clean-up still running after %.0f s", self.id, CLEANUP_TIMEOUT_S)

    async def send(self, text: str) -> None:
        """Send one message; a client that does not read for ``send_timeout_s`` is disconnected.

        The websocket's write buffer is bounded, so a stalled reader makes ``send`` wait; without a timeout
        that client's handler (and its session) would hang forever. Aborting the transport ends the client's
        ``run`` loop, and the usual clean-up frees the session.
        """
        try:
            await asyncio.wait_for(self.ws.send(text), self.server.settings.send_timeout_s)
        except ConnectionClosed:
            pass
        except TimeoutError:
            log.warning("client %s: not reading its websocket; disconnecting", self.id)
            self.server.stalled_disconnects += 1
            transport = getattr(self.ws, "transport", None)
            if transport is not None:
                transport.abort()
            raise ConnectionClosed(None, None) from None

    async def _forward_events(self, events: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            item = await events.get()
            kind = item.get("type") if isinstance(item, dict) else None
            name = kind if kind in ("error", "warning", "info") else "info"
            if isinstance(item, dict) and isinstance(item.get("message"), str):
                item = {**item, "message": P.public_message(item["message"])}  # no internals to clients
            try:
                await self.send(P.event(name, source="engine", data=item))
            except ConnectionClosed:
                return

    def _on_peer_state(self, state: str) -> None:
        if state in ("failed", "closed") and self.peer is not None:
            peer = self.peer

            async def drop() -> None:
                async with self._replacing:
                    if self.peer is not peer or self.closing:
                        return
                    await self._close_media()
                    if self.closing:  # the websocket closed meanwhile: no replacement session
                        return
                    try:
                        await self._new_session()
                        await self.send(P.event("media_ended", reason=f"peer connection {state}"))
                    except (ConnectionClosed, SessionRefused):
                        return  # gone, or no room: the next request creates the session (or says server_full)
                    except Exception:  # noqa: BLE001 - a failed replacement never takes the client down
                        log.exception("client %s: could not replace the session after the peer ended", self.id)

            task = asyncio.get_running_loop().create_task(drop(), name=f"drop-{self.id}")
            self._aux_tasks.add(task)
            task.add_done_callback(self._aux_tasks.discard)

    # --------------------------------------------------------------------------------------------- requests
    async def handle_raw(self, raw: str | bytes) -> None:
        """Parse, dispatch and answer one message; nothing a client sends ends its session.

        Refusals come *before* parsing: a rate-limited message is not parsed at all (its id and type are
        echoed from a scan of its first 256 characters), and only an upload may be larger than
        ``max_message_bytes`` (see :func:`streaming.protocol.parse_message`); a large upload is parsed
        (JSON + base64 of megabytes) on the upload thread instead of the event loop.
        """
        self.requests += 1
        request: P.Request | None = None
        now = time.monotonic()
        limits = self.server.limits
        large = len(raw) > limits.max_message_bytes  # characters <= bytes: only an upload can be this large
        if not self.limiter.allow(now):
            await self._refuse_unparsed(
                raw,
                f"too many messages: at most {self.limiter.rate:g} per second (bursts of "
                f"{self.limiter.burst:g}); this request was not executed",
            )
            return
        upload_charged = large or P.peek_envelope(raw)[1] in P.UPLOAD_TYPES
        if upload_charged and not self.upload_limiter.allow(now):
            await self._refuse_unparsed(raw, self._upload_limit_message())
            if large:
                # Back-pressure: receiving a multi-megabyte frame costs the event loop (unmasking, UTF-8
                # checking) even when it is refused; not reading this socket until the upload bucket refills
                # makes a flooding client wait on TCP instead of costing every session's frames.
                await asyncio.sleep(min(self.upload_limiter.wait_s(time.monotonic()), 10.0))
            return
        try:
            if large:
                loop = asyncio.get_running_loop()
                request = await loop.run_in_executor(self.server.uploads, P.parse_message, raw, limits)
            else:
                request = P.parse_message(raw, limits)
            if request.TYPE in P.UPLOAD_TYPES and not upload_charged and not self.upload_limiter.allow(now):
                raise P.ProtocolError(P.ErrorCode.RATE_LIMITED, self._upload_limit_message(), request.id,
                                      request.TYPE)
            if isinstance(request, P.UploadStyle) and request.format in P.VIDEO_FORMATS:
                self._extract_in_background(request)  # seconds of work: the client's other requests go on
                return
            result = await self.dispatch(request)
            await self.send(P.reply(request, result))
        except P.ProtocolError as exc:
            self.errors += 1
            await self.send(P.error_from_exception(exc))
        except ConnectionClosed:
            raise
        except SessionRefused as exc:
            self.errors += 1
            rid, rtype = (request.id, request.TYPE) if request is not None else (None, None)
            await self.send(P.error_reply(P.ErrorCode.SERVER_FULL, str(exc), rid, rtype))
        except Exception as exc:  # noqa: BLE001 - the session survives any single failing request
            self.errors += 1
            log.exception("client %s: request failed", self.id)
            rid = request.id if request is not None else None
            rtype = request.TYPE if request is not None else None
            # the details are in the server log; the client gets no exception text (paths, internals)
            del exc
            await self.send(
                P.error_reply(P.ErrorCode.INTERNAL, "internal server error (logged on the server)", rid, rtype)
            )

    def _extract_in_background(self, request: P.UploadStyle) -> None:
        """Answer a style-video upload from a task: extraction takes seconds (landmarks on every frame), and
        awaiting it here would stall every later request of this client (``set_style``, ``ping``, ICE...)
        until it ends. One extraction per client at a time; the reply (or error) comes when it is done."""
        if self._extraction is not None and not self._extraction.done():
            raise P.ProtocolError(P.ErrorCode.BAD_STATE, "a style video is still being extracted; wait for its "
                                  "reply", request.id, request.TYPE)

        async def answer() -> None:
            try:
                await self.send(P.reply(request, await self.dispatch(request)))
            except P.ProtocolError as exc:
                self.errors += 1
                await self.send(P.error_from_exception(exc))
            except ConnectionClosed:
                pass  # the client left meanwhile: nobody to answer
            except Exception:  # noqa: BLE001 - as handle_raw: the session survives a failing request
                self.errors += 1
                log.exception("client %s: style video upload failed", self.id)
                await self.send(P.error_reply(P.ErrorCode.INTERNAL, "internal server error (logged on the server)",
                                              request.id, request.TYPE))

        task = asyncio.get_running_loop().create_task(answer(), name=f"extract-{self.id}")
        self._extraction = task
        self._aux_tasks.add(task)
        task.add_done_callback(self._aux_tasks.discard)

    async def _refuse_unparsed(self, raw: str | bytes, message: str) -> None:
        self.errors += 1
        rid, rtype = P.peek_envelope(raw)
        await self.send(P.error_reply(P.ErrorCode.RATE_LIMITED, message, rid, rtype))

    def _upload_limit_message(self) -> str:
        per_min = self.upload_limiter.rate * 60
        return (
            f"too many uploads: at most {per_min:g} per minute (bursts of {self.upload_limiter.burst:g}); "
            "this upload was not executed"
        )

    def _intensity(self) -> float | None:
        if self.intensity is not None:
            return self.intensity
        return float(self.server.runtime.config.style.intensity)

    def _error(self, request: P.Request, code: P.ErrorCode, message: str) -> P.ProtocolError:
        return P.ProtocolError(code, message, request.id, request.TYPE)

    async def dispatch(self, req: P.Request) -> dict[str, Any]:
        """Answer one parsed request from the :data:`HANDLERS` table (one handler per request type)."""
        if self.session is None:
            async with self._replacing:
                if self.session is None:
                    await self._new_session()
        handler = HANDLERS.get(type(req))
        if handler is None:  # pragma: no cover - tests/test_protocol_docs.py checks the table is complete
            raise self._error(req, P.ErrorCode.UNKNOWN_TYPE, f"{req.TYPE} is not handled")
        return await handler(self, req)

    @property
    def live(self) -> ServedSession:
        """The current session (``dispatch`` creates one before any handler runs)."""
        assert self.session is not None
        return self.session

    @_handles(P.Ping)
    async def _ping(self, req: P.Ping) -> dict[str, Any]:
        return {"server_time": time.time()}

    @_handles(P.IceCandidate)
    async def _ice(self, req: P.IceCandidate) -> dict[str, Any]:
        if self.peer is None:
            raise self._error(req, P.ErrorCode.NO_MEDIA, "no peer connection: send an offer first")
        try:
            await self.peer.add_ice_candidate(req.candidate, req.sdp_mid, req.sdp_mline_index)
        except ValueError as exc:
            raise self._error(req, P.ErrorCode.BAD_FIELD, str(exc)) from None
        return {}

    @_handles(P.Hangup)
    async def _hangup(self, req: P.Hangup) -> dict[str, Any]:
        async with self._replacing:
            had_media = self.peer is not None
            await self._close_media()
            await self._new_session()
        return {"stopped": had_media}

    @_handles(P.ListStyles)
    async def _list_styles(self, req: P.ListStyles) -> dict[str, Any]:
        session = self.live
        return {"styles": session.list_styles(), "current": session.style or self.style,
                "intensity": self._intensity()}

    @_handles(P.SetStyle)
    async def _set_style(self, req: P.SetStyle) -> dict[str, Any]:
        session = self.live
        if req.name not in session.list_styles():
            raise self._error(req, P.ErrorCode.UNKNOWN_STYLE, f"no style named {req.name!r}")
        frame = session.set_style(req.name, req.transition_ms)
        self.style = req.name
        return {"style": req.name, "frame": int(frame), "transition_ms": req.transition_ms}

    @_handles(P.SetIntensity)
    async def _set_intensity(self, req: P.SetIntensity) -> dict[str, Any]:
        self.live.set_intensity(req.value)
        self.intensity = req.value
        return {"intensity": req.value}

    @_handles(P.Interrupt)
    async def _interrupt(self, req: P.Interrupt) -> dict[str, Any]:
        self.live.interrupt()
        return {}

    @_handles(P.Pause)
    async def _pause(self, req: P.Pause) -> dict[str, Any]:
        self.live.pause()
        return {}

    @_handles(P.Resume)
    async def _resume(self, req: P.Resume) -> dict[str, Any]:
        self.live.resume()
        return {}

    @_handles(P.GetStats)
    async def _stats(self, req: P.GetStats) -> dict[str, Any]:
        room = self.server.rooms.room_of(self)
        return {
            "session": self.id,
            "engine": self.live.stats(),
            "transport": self.peer.stats() if self.peer is not None else None,
            # the presenter's own room, as its viewers' stats give it (None without a room)
            "room": self.server.rooms.stats(room) if room is not None else None,
        }

    @_handles(P.Offer)
    async def _offer(self, req: P.Offer) -> dict[str, Any]:
        if self.peer is not None:
            raise self._error(
                req, P.ErrorCode.BAD_STATE, "media already running: send hangup before a new offer"
            )
        session = self.live
        if not self.session_started:
            await session.start()
            self.session_started = True
            if self.avatar is not None:  # chosen before media started
                session.set_avatar(self.avatar)
        # the peer pulls through the presenter's broadcast: a room's audience sees the same frames
        settings = self.server.settings
        peer = MediaPeer(self.server.rooms.broadcast_for(self.id).tap(session), on_state=self._on_peer_state,
                         mic_prefetch=settings.mic_prefetch_packets,
                         playout_delay=parse_playout_delay(settings.playout_delay_ms),
                         audio_frame_ms=settings.audio_frame_ms, opus_application=settings.opus_application,
                         mic_ptime_ms=settings.mic_ptime_ms,
                         video_bitrate=1000 * settings.video_bitrate_kbps)
        try:
            answer = await peer.accept_offer(req.sdp)
        except Exception as exc:  # noqa: BLE001 - aiortc raises assorted errors for unusable SDP
            await peer.close()
            log.info("client %s: offer refused: %r", self.id, exc)
            # our own ValueErrors explain the problem; aiortc's internal errors (assertions) say nothing useful
            detail = f": {exc}" if isinstance(exc, ValueError) and str(exc) else ""
            raise self._error(req, P.ErrorCode.BAD_SDP, f"cannot negotiate the offer{detail}") from None
        self.peer = peer
        return {"sdp": answer, "sdp_type": "answer"}

    @_handles(P.UploadStyle)
    async def _upload_style(self, req: P.UploadStyle) -> dict[str, Any]:
        """Decode the clip and encode its style code on the server's upload thread: neither the event loop
        nor the model worker (every session's frames) spends time on an upload."""
        session = self.live
        if req.name in session.list_styles():
            raise self._error(req, P.ErrorCode.STYLE_EXISTS, f"a style named {req.name!r} already exists")
        limit = self.server.settings.max_uploaded_styles
        if len(self.uploaded) >= limit:
            raise self._error(req, P.ErrorCode.BAD_STATE, f"this session already has {limit} uploaded styles")
        bank = session.styles
        loop = asyncio.get_running_loop()
        try:
            if req.format in P.VIDEO_FORMATS:
                clip = await self._extract_video(req)
            else:
                clip = await self.server.decode_upload(decode_clip, req.data, req.format)
            if req.name in self.live.list_styles():  # taken while the video was being extracted
                raise self._error(req, P.ErrorCode.STYLE_EXISTS, f"a style named {req.name!r} already exists")
            await loop.run_in_executor(self.server.uploads, bank.add, req.name, clip)
        except (*clip_errors(), DecoderFailed) as exc:  # type: ignore[misc]  # mypy: no starred except
            raise self._error(req, P.ErrorCode.BAD_CLIP, str(exc)) from None
        if req.name in bank:
            code = bank.get(req.name)
            self.uploaded[req.name] = code
            self.uploaded_clips[req.name] = (clip, {"source": f"upload.{req.format}", "kind": "upload"})
            current = self.live.styles
            if current is not bank and req.name not in current:
                current.add_code(req.name, code)  # the session was replaced meanwhile (peer ended)
        return {"style": req.name, "frames": int(clip.shape[0]), "styles": self.live.list_styles()}

    async def _extract_video(self, req: P.UploadStyle) -> np.ndarray:
        """Style from an uploaded video on the upload thread (the media path and other clients keep running);
        ``style_progress`` events (at most 4 per second) tell the client how far it got."""
        from engine.style_extract import StyleExtractError

        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(done: int, total: Any) -> None:  # called on the upload thread
            now = time.monotonic()
            if now - last[0] >= 0.25:
                last[0] = now
                text = P.event("style_progress", style=req.name, frames=done, total=total)
                asyncio.run_coroutine_threadsafe(self.send(text), loop)

        style_config = self.server.runtime.config.style
        try:
            return await loop.run_in_executor(self.server.uploads, extract_video_clip, req.data, req.format,
                                              style_config, progress)
        except StyleExtractError as exc:
            raise self._error(req, P.ErrorCode.BAD_VIDEO, f"[{exc.code}] {exc}") from None

    @_handles(P.SaveStyle)
    async def _save_style(self, req: P.SaveStyle) -> dict[str, Any]:
        """Persist an uploaded style as a user style (``styles add`` does the same from the command line):
        written atomically on the upload thread; new sessions list it now, every command after a restart."""
        from engine.user_styles import UserStyleError, UserStyles, builtin_names, styles_dir

        upload = self.uploaded_clips.get(req.name)
        if upload is None:
            raise self._error(req, P.ErrorCode.UNKNOWN_STYLE, f"no uploaded style {req.name!r} in this session "
                              "(upload_style it first)")
        clip, origin = upload
        config = self.server.runtime.config
        store = UserStyles(styles_dir(config.style), builtin_names(config))
        if len(store.list()) >= self.server.settings.max_saved_styles:
            raise self._error(req, P.ErrorCode.BAD_STATE,
                              f"the server already keeps {self.server.settings.max_saved_styles} user styles")
        loop = asyncio.get_running_loop()
        try:
            saved = await loop.run_in_executor(self.server.uploads, store.add_clip, req.name, clip, origin)
        except UserStyleError as exc:
            code = {"builtin": P.ErrorCode.STYLE_EXISTS, "exists": P.ErrorCode.STYLE_EXISTS}.get(
                exc.code, P.ErrorCode.BAD_FIELD)
            raise self._error(req, code, str(exc)) from None
        shared = self.server.runtime.styles  # sessions created from now on start with it
        if req.name not in shared:
            shared.add_code(req.name, self.uploaded[req.name])
        return {"style": saved.name, "frames": saved.frames, "saved": True}

    @_handles(P.SetAvatar)
    async def _set_avatar(self, req: P.SetAvatar) -> dict[str, Any]:
        size = self.server.avatar_size
        try:
            image = await self.server.decode_upload(decode_avatar, req.data, req.format, size)
            if self.session_started:
                self.live.set_avatar(image)  # prepared on the model worker; failures arrive as events
        except (*avatar_errors(), ValueError) as exc:  # type: ignore[misc]  # DecoderFailed is a ValueError
            raise self._error(req, P.ErrorCode.BAD_IMAGE, str(exc)) from None
        self.avatar = image
        return {"width": int(image.shape[1]), "height": int(image.shape[0])}
from streaming import room_requests  # noqa: E402, F401 - registers open_room/close_room/watch/answer
