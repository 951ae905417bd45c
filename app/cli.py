"""Command line: `python -m app <command>`.

Each command lives in its own module and exposes `add_arguments(parser)` and
`run(args) -> int`; this file only wires them up, importing a command's module when it is
used so that `--help` stays fast and one command's heavy imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("app.serve", "run the service (HTTP/WebSocket, SIP)"),
    "transcribe": ("app.transcribe", "transcribe an audio file through the live pipeline"),
    "bench": ("app.bench", "run a benchmark (engine, pauses, stream, twilio, sip, talkback, soak, progressive)"),
    "outbox": ("app.delivery.outbox_cli", "inspect and manage the webhook outbox"),
    "twilio-sim": ("app.sim.twilio", "replay a WAV file as a Twilio Media Stream"),
    "say": ("app.say", "speak a text with a talk-back voice into a WAV file"),
    "sip-worker": ("sip.worker", "one SIP worker process (started by `serve`, not by hand)"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Hearsay speech gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            module = importlib.import_module(module_name)
            module.add_arguments(cmd)
            cmd.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    return int(args.handler(args))
