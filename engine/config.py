"""The one configuration tree of the engine: dataclasses, loadable from TOML, overridable from the command line.

Why one tree: the serve command, the `speak` command, the benchmarks and the tests all build the same pipeline;
a single typed tree (with validation in one place) keeps a knob from meaning different things in different
entry points. Precedence, lowest first: dataclass defaults < TOML file (``--config``) < ``--set section.key=value``
< the dedicated flags (``--lookahead 3``...).

TOML layout mirrors the dataclasses::

    fps = 30
    [decoder]
    lookahead = 3
    [renderer]
    kind = "warp"
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.timing import SAMPLE_RATE

ACCELERATORS = ("eager", "compile", "cudagraph", "tensorrt")
RECOGNIZER_BACKENDS = ("allphone", "allphone-viterbi", "words", "vosk", "labels")
RENDERER_KINDS = ("warp", "pirenderer")
LOOKAHEAD_PADS = ("sil", "repeat", "hold")
MAX_DECODER_LOOKAHEAD = 5  # the decoder window is t-5 .. t+5
MAX_WINDOW_LOOKAHEAD = 13  # the PIRenderer window is t-13 .. t+13
MAX_INTENSITY = 2.0  # style intensity: 0 neutral .. 1 as encoded .. 2 exaggerated (engine, protocol, page)
INTENSITY_SPACES = ("hybrid", "code")  # where style intensity is applied (engine/stylebank.StyleBank.styled)
REST_CHOICES = ("style", "neutral")  # whose silence a rest-aware renderer shows as the photo (style.rest)


class ConfigError(ValueError):
    """A configuration file, override or value is invalid (unknown key, wrong type, out of range)."""


@dataclass
class AudioConfig:
    sample_rate: int = SAMPLE_RATE  # the recognizers and the timing module work at 16 kHz mono
    chunk_ms: int = 20  # capture / output audio chunk
    max_input_queue_s: float = 2.0  # audio accepted ahead of the real-time position before pushes are dropped
    # Constant input -> output delay of a live session (audio and video). None = computed from the decoder
    # lookahead, the recognizer's label lag and the renderer's window (engine.latency.output_delay).
    output_delay_ms: float | None = None


@dataclass
class RecognizerConfig:
    backend: str = "allphone"  # allphone | allphone-viterbi | words | vosk | labels
    vosk_model: str | None = None  # vosk model directory (backend "vosk")
    labels: str | None = None  # phoneme label file (backend "labels"): frame-level ids/names at 30 fps
    # allphone: future audio each label waits for (ms, multiple of 10; None = the backend's default, 60 ms).
    # The latency/accuracy knob of the default backend: every 10 ms adds 10 ms to the output delay
    # (engine/recognizer/README.md has the accuracy per setting; benchmarks/latency.py the onset -> mouth time).
    lookahead_ms: int | None = None
    # Run the pocketsphinx backends (allphone, allphone-viterbi, words) in a child process per session: they
    # hold Python's GIL while scoring, which stalls the event loop and the model worker of the whole server
    # (engine/recognizer/process.py). Off: in the session's thread, as a library user would call it.
    isolate: bool = True


@dataclass
class DecoderConfig:
    checkpoint: str | None = None  # None = built-in weights; "random" = seeded random small model (tests)
    # Frames of future phonemes the decoder waits for (0..5); the rest of the 11-frame window is padded.
    # Chosen with benchmarks/latency.py (built-in model): speech onset -> first mouth motion is the same for
    # every L (~200 ms: the model anticipates by as many frames as it waits), while the mouth error against
    # full lookahead falls from 0.70 (L=2) / 0.50 (L=3) to 0.27 (L=4) of the mouth's movement; each frame of
    # lookahead adds 33 ms to the output (A/V) delay. L=4: quality within ~7 % of offline (R^2 0.93).
    lookahead: int = 4
    # How the unknown future of a window is padded: sil | repeat (the last stable phoneme) | hold (it for 2
    # frames, then SIL; smallest mouth error in benchmarks/latency.py)
    pad: str = "hold"
    accelerator: str = "eager"  # eager | compile | cudagraph | tensorrt
    threads: int = 1  # torch intra-op threads of the model worker
    # Model worker processes (decode + render of the sessions, engine/model_process.py): each loads the models
    # once and runs the sessions placed on it (the least loaded) off the server's GIL. 0 = one model-worker
    # thread in the server process (as a library user would call it; runtimes built from injected parts use it)
    workers: int = 2
    # Niceness of the model worker processes: when the machine is short of CPU, the server's event loop, WebRTC
    # encoders and recognizers go first (a frame rendered but never sent on time is wasted; a starved sender stalls
    # every session's video and audio), and the renders take what is left: fewer fresh frames, not a collapse
    worker_nice: int = 5
    max_batch: int = 16  # at most this many frames per decoder call (catch-up batches)


@dataclass
class RendererConfig:
    kind: str = "warp"  # warp | pirenderer
    checkpoint: str | None = None  # PIRenderer weights (kind "pirenderer")
    size: int = 256
    window_lookahead: int = 0  # PIRenderer: future frames of the 27-frame window (0..13), rest clamped


@dataclass
class StyleConfig:
    default: str = "neutral"
    crossfade_frames: int = 8  # style switches blend over this many frames
    clips_dir: str | None = None  # extra style clips (.mat/.npy/.txt), added by file stem
    intensity: float = 1.0  # 0 = neutral, 1 = the style as encoded, up to 2 = exaggerated
    intensity_space: str = "hybrid"  # "hybrid": rest face scaled in output space, motion in code space;
    # "code": the paper's line in style-code space (saturates: d(2)/d(1) 1.41, benchmarks.styles)
    rest: str = "neutral"  # the silence drawn as the photo itself: "neutral" = the neutral style's, with the
    # current style's lip opening (styles and intensity show as changes of the face, lips stay closed in silence:
    # engine.stylebank.rest_expression), "style" = the current style's (a style's static pose then never shows);
    # benchmarks/results/styles_intensity_rest_*.png (_open_lips: the plain neutral silence, before)
    # share of a style's silent eyelid closure (or widening), relative to the neutral silence, drawn on the photo
    # (style.rest = "neutral"): the sample speakers' coefficients carry their own eye shape, and drawn in full (1)
    # happy, angry and furious half-closed the eyes all the time, a sleepy face; 0 fits the style videos' eyes best
    # (benchmarks/style_eyes.py, leave-one-style-out); 0.25 keeps a visible squint (happy) and a wider look
    # (surprised) at nearly the same error. The style's eye motion in speech is drawn in full either way.
    lid_keep: float = 0.25
    user_dir: str | None = None  # styles added with `styles add`; None = $XDG_DATA_HOME/styletalk-live/styles
    video_min_seconds: float = 2.0  # a style video must be this long (extract-style, styles add, uploads) ...
    video_max_seconds: float = 60.0  # ... and at most this long
    video_max_pixels: int = 3840 * 2160  # larger video frames are refused


@dataclass
class AvatarConfig:
    image: str | None = None  # None = built-in avatar
    head_motion: float = 1.0  # natural head motion: 1 = the sample speakers' spread and rhythm, 0 = a still head


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_sessions: int = 4
    max_upload_bytes: int = 8 << 20
    max_message_bytes: int = 64 << 10
    # Audience (rooms): "" = viewers get direct WebRTC from this process (each viewer its own encoder, so the
    # audience is capped at max_direct_viewers per room); one or more comma-separated Janus websocket URLs
    # (ws://host:8188) = the engine encodes each room once and Janus fans it out (up to max_viewers per room)
    janus: str = ""
    # RTMP URL each opened room is also pushed to (H.264 + AAC in FLV; "{room}" is replaced by the room id),
    # e.g. rtmp://live.example.com/app/<stream key>; "" = no push
    rtmp: str = ""
    max_direct_viewers: int = 3
    max_viewers: int = 500
    # The base URL viewers reach this node under (http(s)://name:port), written into rooms' watch links; "" = the
    # host the presenter reached it by (its Host header). Set it when that differs from what viewers must use
    # (a node behind a proxy, or presenters on loopback and viewers on other machines)
    public_url: str = ""
    max_rooms: int = 8
    # Microphone packets the WebRTC receiver holds back before the engine gets one: 0 = each one as it arrives
    # (the engine places audio on its own clock, so waiting smooths nothing); aiortc's own buffer holds 4 (80 ms)
    mic_prefetch_packets: int = 0
    # RTP playout-delay header extension on the video sent to browsers, "MIN,MAX" in ms (multiples of 10):
    # the receiver's bounds on how long it holds a frame before showing it; "" = not sent (the browser decides)
    playout_delay_ms: str = ""
    # Opus packet length of the presenter's audio sent to it, ms (10 or 20; aiortc's own is 20): a packet leaves
    # once its last sample exists and a receiver's audio jitter buffer counts in packets, so 10 ms packets may let
    # the browser hold less; but twice the packets cost +0.011 to +0.029 CPU s per audio second over 0.021 (encode
    # + aiortc's per-packet path; benchmarks.served_costs, two runs at load 8-10), 1-3 % of a served session, and
    # in-process server+client tests at load 12-14 lost the mouth motion with 10 (3 of 3 runs) and not with 20:
    # 20 until a quiet A/B shows the gain
    audio_frame_ms: int = 20
    # libopus mode of that audio: "lowdelay" (CELT only: 2.5 ms of encoder lookahead) or aiortc's "voip" (6.5 ms);
    # at aiortc's 96 kbit/s CELT carries speech well
    opus_application: str = "lowdelay"
    # microphone packet length the server's answer asks the browser for (a=ptime), ms: 0 = the browser's choice
    # (Chromium: 20; it honours 10). 10 sends a sound ~5 ms sooner on average but feeds the recognizer twice as
    # many blocks: allphone costs 0.197 instead of 0.138 CPU s per audio second (benchmarks.served_costs), the
    # price of a served session rises ~7 %; so off by default
    mic_ptime_ms: int = 0
    # VP8 bitrate sent to presenters, kbit/s: held steady (changed only when the receiver's estimate halves or,
    # after that, doubles again); 0 = aiortc's encoder, which starts a new encoder, with a keyframe, at every
    # > 10 % move of the estimate (10-15 a minute while a browser's estimate climbs)
    video_bitrate_kbps: int = 800


@dataclass
class Config:
    fps: int = 30
    audio: AudioConfig = field(default_factory=AudioConfig)
    recognizer: RecognizerConfig = field(default_factory=RecognizerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    style: StyleConfig = field(default_factory=StyleConfig)
    avatar: AvatarConfig = field(default_factory=AvatarConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def validate(self) -> Config:
        """Check ranges and choices; raises :class:`ConfigError` naming the key. Returns self."""
        _check(self.fps == 30, "fps", "only 30 fps is supported (the models and labels are 30 fps)")
        _check(self.audio.sample_rate == SAMPLE_RATE, "audio.sample_rate", f"only {SAMPLE_RATE} Hz is supported")
        _check(5 <= self.audio.chunk_ms <= 100, "audio.chunk_ms", "must be in 5..100")
        _check(self.audio.max_input_queue_s > 0, "audio.max_input_queue_s", "must be > 0")
        if self.audio.output_delay_ms is not None:
            _check(20 <= self.audio.output_delay_ms <= 5000, "audio.output_delay_ms", "must be in 20..5000")
        _choice(self.recognizer.backend, RECOGNIZER_BACKENDS, "recognizer.backend")
        if self.recognizer.backend == "labels":
            _check(self.recognizer.labels is not None, "recognizer.labels", "the labels backend needs a file")
        la = self.recognizer.lookahead_ms
        if la is not None:
            _check(0 <= la <= 500 and la % 10 == 0, "recognizer.lookahead_ms", "must be a multiple of 10 in 0..500")
        if self.recognizer.backend == "vosk":
            _check(self.recognizer.vosk_model is not None, "recognizer.vosk_model", "vosk needs a model dir")
        d = self.decoder
        _check(0 <= d.lookahead <= MAX_DECODER_LOOKAHEAD, "decoder.lookahead", "must be in 0..5")
        _choice(d.pad, LOOKAHEAD_PADS, "decoder.pad")
        _choice(d.accelerator, ACCELERATORS, "decoder.accelerator")
        _check(1 <= d.threads <= 64, "decoder.threads", "must be in 1..64")
        _check(1 <= d.max_batch <= 256, "decoder.max_batch", "must be in 1..256")
        _check(0 <= d.workers <= 64, "decoder.workers", "must be in 0..64")
        _check(0 <= d.worker_nice <= 19, "decoder.worker_nice", "must be in 0..19")
        r = self.renderer
        _choice(r.kind, RENDERER_KINDS, "renderer.kind")
        _check(32 <= r.size <= 1024 and r.size % 32 == 0, "renderer.size", "must be a multiple of 32 in 32..1024")
        _check(0 <= r.window_lookahead <= MAX_WINDOW_LOOKAHEAD, "renderer.window_lookahead", "must be in 0..13")
        _check(0.0 <= self.avatar.head_motion <= 2.0, "avatar.head_motion", "must be in 0..2")
        s = self.style
        _check(0 <= s.crossfade_frames <= 300, "style.crossfade_frames", "must be in 0..300")
        _check(0.0 <= s.intensity <= MAX_INTENSITY, "style.intensity", f"must be in 0..{MAX_INTENSITY:g}")
        _choice(s.intensity_space, INTENSITY_SPACES, "style.intensity_space")
        _choice(s.rest, REST_CHOICES, "style.rest")
        _check(0.0 <= s.lid_keep <= 1.0, "style.lid_keep", "must be in 0..1")
        _check(bool(s.default), "style.default", "must not be empty")
        _check(0.5 <= s.video_min_seconds <= s.video_max_seconds <= 600, "style.video_min_seconds",
               "must satisfy 0.5 <= video_min_seconds <= video_max_seconds <= 600")
        _check(s.video_max_pixels >= 64 * 64, "style.video_max_pixels", "must be at least 4096")
        v = self.server
        _check(0 <= v.port <= 65535, "server.port", "must be in 0..65535")
        _check(v.max_sessions >= 1, "server.max_sessions", "must be >= 1")
        _check(v.max_upload_bytes > 0 and v.max_message_bytes > 0, "server.max_*_bytes", "must be > 0")
        _check(v.max_direct_viewers >= 0 and v.max_viewers >= 1 and v.max_rooms >= 1, "server.max_viewers",
               "max_direct_viewers must be >= 0, max_viewers and max_rooms >= 1")
        _check(all(u.strip().startswith(("ws://", "wss://")) for u in v.janus.split(",") if u.strip()),
               "server.janus", "must be ws:// or wss:// URLs separated by commas")
        _check(not v.rtmp or v.rtmp.startswith(("rtmp://", "rtmps://")), "server.rtmp", "must be an rtmp:// URL")
        _check(not v.public_url or (v.public_url.startswith(("http://", "https://")) and "?" not in v.public_url),
               "server.public_url", "must be an http:// or https:// base URL without a query")
        _check(0 <= v.mic_prefetch_packets <= 15, "server.mic_prefetch_packets", "must be in 0..15")
        _check(v.audio_frame_ms in (10, 20), "server.audio_frame_ms", "must be 10 or 20")
        _choice(v.opus_application, ("voip", "lowdelay"), "server.opus_application")
        _check(v.video_bitrate_kbps == 0 or 250 <= v.video_bitrate_kbps <= 20_000, "server.video_bitrate_kbps",
               "must be 0 (aiortc's) or in 250..20000")
        _check(v.mic_ptime_ms in (0, 10, 20, 40, 60), "server.mic_ptime_ms",
               "must be 0 (the browser's choice), 10, 20, 40 or 60")
        _check(parse_playout_delay(v.playout_delay_ms) is not None or not v.playout_delay_ms.strip(),
               "server.playout_delay_ms", "must be \"\" or \"MIN,MAX\": ms, 0 <= MIN <= MAX <= 40950")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, tree: Mapping[str, Any]) -> Config:
        """The inverse of :meth:`to_dict` (a child process gets its parent's configuration as JSON); validated."""
        config = cls()
        _apply_tree(config, tree)
        return config.validate()


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise ConfigError(f"config {key}: {why}")


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    _check(value in choices, key, f"{value!r} is not one of {', '.join(choices)}")


# ----------------------------------------------------------------------------------------------- typed setting


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert a TOML value or a CLI string to the annotated field type (int, float, bool, str, X | None)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1:
            raise ConfigError(f"config {key}: unsupported type {annotation}")
        return _coerce(value, inner[0], key)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value, 0) if isinstance(value, str) else int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if annotation is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"config {key}: expected {name}, got {value!r}") from None
    raise ConfigError(f"config {key}: unsupported type {annotation}")


def _set(config: Config, key: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level key like ``fps``) with type conversion; unknown keys raise."""
    parts = key.strip().split(".")
    target: Any = config
    for i, part in enumerate(parts):
        hints = _field_types(type(target))
        if part not in hints:
            where = ".".join(parts[:i]) or "top level"
            known = ", ".join(sorted(hints))
            raise ConfigError(f"config: unknown key {key!r} (no {part!r} in {where}; known: {known})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(hints[part]):
                raise ConfigError(f"config {key}: is a section; set its keys ({key}.<name>=...)")
            setattr(target, part, _coerce(value, hints[part], key))
        else:
            if not dataclasses.is_dataclass(hints[part]):
                raise ConfigError(f"config {key}: {'.'.join(parts[: i + 1])} is not a section")
            target = getattr(target, part)


def _apply_tree(config: Config, tree: Mapping[str, Any], prefix: str = "") -> None:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, Mapping):
            _apply_tree(config, value, key + ".")
        else:
            _set(config, key, value)


def load_config(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults, then the TOML file at ``path``, then ``overrides`` ({"decoder.lookahead": "3"}); validated."""
    config = Config()
    if path is not None:
        p = Path(path)
        try:
            tree = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {p} does not exist") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {p}: {exc}") from None
        _apply_tree(config, tree)
    for key, value in (overrides or {}).items():
        _set(config, key, value)
    return config.validate()


# ------------------------------------------------------------------------------------------------- command line

# dedicated flags: (flag, config key, type, help)
_FLAGS: list[tuple[str, str, type, str]] = [
    ("--lookahead", "decoder.lookahead", int, "decoder lookahead in frames (0..5): latency vs lip accuracy"),
    ("--accelerator", "decoder.accelerator", str, f"decoder accelerator: {' | '.join(ACCELERATORS)}"),
    ("--threads", "decoder.threads", int, "torch threads of the model worker"),
    ("--workers", "decoder.workers", int, "model worker processes for decode + render (0 = one model thread in "
     "the server process)"),
    ("--checkpoint", "decoder.checkpoint", str, "StyleTalk checkpoint (official or own format)"),
    ("--recognizer", "recognizer.backend", str, f"phoneme recognizer: {' | '.join(RECOGNIZER_BACKENDS)}"),
    ("--labels", "recognizer.labels", str, "phoneme label file for --recognizer labels"),
    ("--recognizer-lookahead", "recognizer.lookahead_ms", int,
     "allphone recognizer lookahead in ms (multiple of 10): latency vs phoneme accuracy"),
    ("--renderer", "renderer.kind", str, f"renderer: {' | '.join(RENDERER_KINDS)}"),
    ("--renderer-checkpoint", "renderer.checkpoint", str, "PIRenderer checkpoint (--renderer pirenderer)"),
    ("--window-lookahead", "renderer.window_lookahead", int, "PIRenderer window lookahead in frames (0..13)"),
    ("--style", "style.default", str, "speaking style at start (see `styletalk-live styles`)"),
    ("--intensity", "style.intensity", float, "style intensity: 0 neutral .. 1 as encoded .. 2 exaggerated"),
    ("--intensity-space", "style.intensity_space", str,
     "where intensity scales the style: hybrid (rest face linear in output space, motion along the code line;"
     " default) | code (the paper's style-code line)"),
    ("--rest", "style.rest", str, "whose silence is drawn as the photo itself: neutral (default: the neutral style's "
     "with the style's lip opening, so styles show as changes of the face and the lips stay closed in "
     "silence) | style (the current style's: only motion shows the style)"),
    ("--avatar", "avatar.image", str, "photo of a face to animate"),
    ("--size", "renderer.size", int, "output frames are SIZE² pixels: 256 (real-time on one CPU thread) or 512"),
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with defaults, except empty ones (None, False, "", []) that would only say "(default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, "", []) or "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _dest(flag: str) -> str:
    return "cfg_" + flag.lstrip("-").replace("-", "_")


# what a None default means, for --help
_NONE_MEANS = {
    "decoder.checkpoint": "built-in weights",
    "recognizer.labels": "none",
    "recognizer.lookahead_ms": "the backend's own (allphone: 60)",
    "renderer.checkpoint": "none",
    "avatar.image": "the built-in avatar",
}


def _metavar(key: str, typ: type) -> str:
    name = key.rsplit(".", 1)[-1]
    if name in ("checkpoint", "labels"):
        return "FILE"
    if name == "image":
        return "PHOTO"
    if name.endswith("_ms"):
        return "MS"
    return {int: "N", float: "X"}.get(typ, "NAME")


def _default_text(key: str) -> str:
    value: Any = Config()
    for part in key.split("."):
        value = getattr(value, part)
    return _NONE_MEANS.get(key, "none") if value is None else str(value)


def add_config_arguments(parser: argparse.ArgumentParser, flags: tuple[str, ...] | None = None,
                         exclude: tuple[str, ...] = ()) -> None:
    """Add ``--config FILE.toml``, repeatable ``--set section.key=value`` and the common engine flags
    (only ``flags`` when given, never ``exclude``: a command offers no flag it would ignore)."""
    group = parser.add_argument_group("engine configuration")
    group.add_argument("--config", metavar="FILE.toml", default=argparse.SUPPRESS, help="configuration file (TOML)")
    group.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=argparse.SUPPRESS,
        dest="cfg_set",
        help="override one configuration value, e.g. --set decoder.lookahead=2 (repeatable)",
    )
    for flag, key, typ, help_text in _FLAGS:
        if (flags is not None and flag not in flags) or flag in exclude:
            continue
        # SUPPRESS: a flag not given leaves the configuration (file, --set, defaults) alone, and --help shows the
        # configuration's real default instead of argparse's None
        group.add_argument(flag, dest=_dest(flag), type=typ, default=argparse.SUPPRESS, metavar=_metavar(key, typ),
                           help=f"{help_text} (default: {_default_text(key).replace('%', '%%')})")


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the validated :class:`Config` from arguments parsed with :func:`add_config_arguments`."""
    overrides: dict[str, Any] = {}
    for item in getattr(args, "cfg_set", []) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value.strip()
    for flag, key, _typ, _help in _FLAGS:
        value = getattr(args, _dest(flag), None)
        if value is not None:
            overrides[key] = value
    return load_config(getattr(args, "config", None), overrides)


def parse_playout_delay(text: str) -> tuple[int, int] | None:
    """``"MIN,MAX"`` (ms) -> (min, max); None when empty or malformed (``validate`` names the key)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        return None
    lo, hi = int(parts[0]), int(parts[1])
    return (lo, hi) if 0 <= lo <= hi <= 40950 else None
