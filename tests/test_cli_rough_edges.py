"""What a new user meets first: --help that explains, one-line errors instead of tracebacks, progress, summaries,
a quiet serve log, and derived outputs that never overwrite tracked assets unless asked."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.config import Config

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clients.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def client(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clients.client", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.parametrize("command", ["serve", "speak", "render", "styles"])
def test_engine_flags_help_shows_real_defaults_and_plain_metavars(command: str) -> None:
    # `styles` lists/adds/removes with --checkpoint only; its engine flags belong to `styles --sheet`
    out = cli(command, "--sheet", "x.png", "--help") if command == "styles" else cli(command, "--help")
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())  # argparse wraps lines
    assert "CFG_" not in text and "(default: None)" not in text and "(default: [])" not in text
    assert f"usage: styletalk-live {command}" in text
    assert f"--lookahead N decoder lookahead in frames (0..5): latency vs lip accuracy (default: " \
        f"{Config().decoder.lookahead})" in text
    if command != "styles":
        assert f"(default: {Config().style.default})" in text


HELP_WITHOUT_TORCH = """
import contextlib, io, sys
from clients.cli import COMMANDS, main
for argv in [[c, "--help"] for c in COMMANDS] + [["render"], ["train", "--steps", "x"], ["fit-landmarks", "--x"]]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == (0 if argv[-1] == "--help" else 2), (argv, exc.code)
        else:
            raise AssertionError(argv)
print(sorted(m for m in ("torch", "aiortc", "dlib") if m in sys.modules))
"""


def test_help_and_argument_errors_import_no_torch() -> None:
    """Every command's --help and a bad argument answer before the heavy imports (start-up stays instant)."""
    out = subprocess.run([sys.executable, "-c", HELP_WITHOUT_TORCH], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def test_styles_refuses_engine_flags_it_would_ignore() -> None:
    for flag, value in (("--recognizer", "labels"), ("--style", "happy"), ("--recognizer-lookahead", "60")):
        out = cli("styles", flag, value)
        assert out.returncode == 2 and f"unrecognized arguments: {flag}" in out.stderr, (flag, out.stderr)


def test_train_help_names_the_command_and_explains_every_flag() -> None:
    from models.train_config import build_parser

    out = cli("train", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: styletalk-live train")
    undocumented = [a.option_strings for a in build_parser()._actions if a.option_strings and not a.help]
    assert not undocumented
    assert "lip-sync discriminator" in " ".join(out.stdout.split())


def test_fit_landmarks_help_and_default_output_leave_the_tracked_asset_alone() -> None:
    from engine import landmark_fit

    out = cli("fit-landmarks", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: styletalk-live fit-landmarks")
    assert landmark_fit.ASSET.is_file()  # the tracked built-in map
    assert (ROOT / landmark_fit.DEFAULT_OUT).resolve() != landmark_fit.ASSET.resolve()
    assert landmark_fit.DEFAULT_OUT.parts[0] == "runs"


def test_render_with_a_photo_without_a_face_is_one_line(tmp_path: Path) -> None:
    import av

    photo = tmp_path / "wall.png"
    img = np.zeros((160, 160, 3), np.uint8)
    img[:, :80] = 200
    with av.open(str(photo), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width = s.height = 160
        s.pix_fmt = "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    labels = next((ROOT / "data" / "styletalk-samples" / "source" / "phoneme").glob("*.json"))
    out = cli("render", "--avatar", str(photo), "--phonemes", str(labels), "-o", str(tmp_path / "x.mp4"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "styletalk-live render: error: no face found" in out.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_client_errors_are_one_line() -> None:
    bad_url = client("--url", "http://127.0.0.1:8080/ws")
    assert bad_url.returncode == 2 and "not a websocket URL" in bad_url.stderr
    no_server = client("--url", "ws://127.0.0.1:9/ws", "--seconds", "1")
    assert no_server.returncode == 1 and "is `styletalk-live serve` running" in no_server.stderr
    for out in (bad_url, no_server):
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_client_without_the_servers_token_is_told_so(live_runtime) -> None:
    from streaming.server import PresenterServer
    from tests.streaming_fixtures import server_settings

    async def main() -> tuple[int, str]:
        async with PresenterServer(live_runtime, server_settings(token="s3cret")) as server:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "clients.client", "--url", f"ws://127.0.0.1:{server.port}/ws",
                "--seconds", "1", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), 120)
            return proc.returncode or 0, err.decode()

    rc, err = asyncio.run(main())
    assert rc == 1 and "Traceback" not in err
    assert "HTTP 401 (missing or wrong token? pass --token)" in err


def test_client_summary_is_short_and_reads_real_stats() -> None:
    from clients.client import summarize
    from tests.engine_helpers import small_runtime

    runtime = small_runtime(np.full(60, 31))

    async def run() -> dict:
        session = runtime.new_session("summary")
        await session.start()
        for _ in range(6):
            await session.next_video_frame()
        stats = session.stats()
        await session.close()
        return stats

    stats = asyncio.run(run())
    runtime.close()
    text = summarize({"engine": stats}, {"frames": 6, "fps": 30.0})
    lines = text.splitlines()
    assert len(lines) == 3
    assert f"{stats['frames_sent']} frames sent" in lines[1] and "style neutral" in lines[1]
    assert "p50" in lines[2] and "A/V offset" in lines[2]


def test_serve_log_keeps_ice_chatter_out_unless_verbose() -> None:
    from streaming.serve_command import CHATTY_LOGGERS, build_parser, quiet_webrtc_logs

    before = {n: logging.getLogger(n).level for n in CHATTY_LOGGERS}
    try:
        quiet_webrtc_logs(build_parser().parse_args([]).verbose)
        assert all(not logging.getLogger(n).isEnabledFor(logging.INFO) for n in CHATTY_LOGGERS)
        quiet_webrtc_logs(build_parser().parse_args(["--verbose"]).verbose)
        assert all(logging.getLogger(n).isEnabledFor(logging.DEBUG) for n in CHATTY_LOGGERS)
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)


def test_speak_shows_progress(tmp_path: Path) -> None:
    wav = ROOT / "data" / "styletalk-samples" / "source" / "wav" / "Obama_clip1.wav"
    out = cli("speak", "--audio", str(wav), "--duration", "1", "-o", "", "--stats", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "speak: 100%|" in out.stderr and "s media" in out.stderr
