"""The Janus configuration this project runs with, as files: ``python -m streaming.janus_config DIR``.

Janus (Debian package ``janus``) reads a folder of ``.jcfg`` files. The project needs only the core, the
WebSockets transport (the engine's API connection, loopback by default) and the Streaming plugin (RTP
mountpoints the engine creates per room); everything else is disabled. ``deploy/janus/`` holds the files for
local use (``janus -F deploy/janus -C deploy/janus/janus.jcfg``); tests and benchmarks write their own with free
ports through :func:`write_config`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

LIB = "/usr/lib/x86_64-linux-gnu/janus"
UNUSED_PLUGINS = ("audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "sip", "textroom",
                  "videocall", "videoroom", "voicemail")
UNUSED_TRANSPORTS = ("http", "mqtt", "nanomsg", "pfunix", "rabbitmq")


def _lib_dir() -> str:
    for candidate in (LIB, "/usr/lib/aarch64-linux-gnu/janus", "/usr/lib/janus", "/usr/local/lib/janus"):
        if Path(candidate, "plugins").is_dir():
            return candidate
    return LIB


def config_files(ws_port: int = 8188, ws_ip: str = "127.0.0.1", rtp_ports: str = "20000-20999",
                 mount_ports: str = "21000-21999", ice_interfaces: str = "") -> dict[str, str]:
    """File name -> text. ``rtp_ports``: WebRTC media towards viewers; ``mount_ports``: the UDP ports the
    engine's RTP arrives on; ``ice_interfaces``: restrict ICE to these interfaces. IPv6 is off: a browser that
    nominates an IPv6 pair while Janus sends on its IPv4 pair receives nothing after the first keyframe."""
    lib = _lib_dir()
    enforce = f'\n\tice_enforce_list = "{ice_interfaces}"' if ice_interfaces else ""
    return {
        "janus.jcfg": f"""general: {{
	plugins_folder = "{lib}/plugins"
	transports_folder = "{lib}/transports"
	events_folder = "{lib}/events"
	loggers_folder = "{lib}/loggers"
	debug_level = 4
	session_timeout = 60
	server_name = "styletalk-live-janus"
}}
media: {{
	ipv6 = false
	rtp_port_range = "{rtp_ports}"
}}
nat: {{
	ignore_mdns = true{enforce}
}}
plugins: {{
	disable = "{",".join(f"libjanus_{p}.so" for p in UNUSED_PLUGINS)}"
}}
transports: {{
	disable = "{",".join(f"libjanus_{t}.so" for t in UNUSED_TRANSPORTS)}"
}}
events: {{
	broadcast = false
}}
loggers: {{
	disable = "libjanus_jsonlog.so"
}}
""",
        "janus.transport.websockets.jcfg": f"""general: {{
	json = "compact"
	ws = true
	ws_port = {ws_port}
	ws_ip = "{ws_ip}"
	wss = false
}}
admin: {{
	admin_ws = false
}}
""",
        "janus.plugin.streaming.jcfg": f"""general: {{
	rtp_port_range = "{mount_ports}"
}}
""",
    }


def write_config(folder: Path, **kwargs: object) -> Path:
    """Write the config files into ``folder``; returns the path of ``janus.jcfg``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in config_files(**kwargs).items():  # type: ignore[arg-type]
        (folder / name).write_text(text, encoding="utf-8")
    return folder / "janus.jcfg"


def janus_command(folder: Path) -> list[str]:
    return ["janus", "-F", str(folder), "-C", str(folder / "janus.jcfg")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streaming.janus_config", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--ws-port", type=int, default=8188)
    args = parser.parse_args(argv)
    write_config(args.folder, ws_port=args.ws_port)
    print(" ".join(janus_command(args.folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
