"""The live engine, one part per concern (see :mod:`engine.live.session` for who owns what).

:class:`LiveSession` is built by :meth:`engine.runtime.EngineRuntime.new_session`; the output types are
re-exported here so callers need not know the module layout.
"""

from engine.live.frames import OutputAudioChunk, OutputVideoFrame, SessionClosed
from engine.live.session import LiveSession
from engine.sources import AudioFormatError
from engine.stylebank import StyleError

__all__ = ["AudioFormatError", "LiveSession", "OutputAudioChunk", "OutputVideoFrame", "SessionClosed",
           "StyleError"]
