"""`styletalk-live` command line: one entry point, one sub-command per job.

Each sub-command owns its argument parser in the module that implements it (so `--help` is written next to the
code it explains); this module only dispatches, which keeps start-up fast: heavy imports (torch, aiortc) happen
only for the command that needs them.
"""

from __future__ import annotations

import importlib
import logging
import sys

# name -> (module:function taking argv and returning an exit code, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("streaming.serve_command:main", "serve the presenter page + WebRTC + websocket control (default)"),
    "speak": ("engine.speak:main", "run the live pipeline on a WAV file or the microphone into a recording"),
    "render": ("engine.offline:main", "offline render: phoneme labels or audio -> MP4 (H.264/AAC)"),
    "styles": ("engine.user_styles:main", "list speaking styles; `styles add NAME VIDEO|CLIP`, `styles remove NAME`, "
               "`styles --sheet OUT.png`"),
    "extract-style": ("engine.style_extract:main", "a style clip (.npy) from any video of a talking face"),
    "train": ("models.train_config:main", "train a StyleTalk checkpoint on StyleTalk-format data"),
    "fit-landmarks": ("engine.landmark_fit:main", "fit the expression->landmark map of the warp renderer"),
}
DEFAULT_COMMAND = "serve"

USAGE = """usage: styletalk-live [COMMAND] [options]

A photo of a face talks back live, lips in sync with the speech it hears, in a chosen speaking style.

commands:
{commands}

Without a command, `styletalk-live` runs `{default}` on built-in defaults (built-in avatar, weights and styles;
nothing is downloaded). `styletalk-live COMMAND --help` explains each command's options.
"""


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = "\n".join(f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items())
    return USAGE.format(commands=lines, default=DEFAULT_COMMAND)


def _resolve(target: str):
    module_name, func_name = target.split(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv and argv[0] in ("--version", "version"):
        from importlib.metadata import version

        print(f"styletalk-live {version('styletalk-live')}")
        return 0
    if argv and not argv[0].startswith("-"):
        command, rest = argv[0], argv[1:]
        if command not in COMMANDS:
            print(f"styletalk-live: unknown command {command!r}\n", file=sys.stderr)
            print(_usage(), file=sys.stderr)
            return 2
    else:
        command, rest = DEFAULT_COMMAND, argv
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    func = _resolve(COMMANDS[command][0])
    try:
        return int(func(rest) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
