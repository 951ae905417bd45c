"""`python -m app bench <name>`: one module per benchmark, each with add_arguments/run."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHMARKS = {
    "engine": "app.bench.engine",
    "pauses": "app.bench.pauses",
    "stream": "app.bench.stream",
    "twilio": "app.bench.twilio",
    "sip": "app.bench.sip",
    "talkback": "app.bench.talkback",
    "soak": "app.bench.soak",
    "progressive": "app.bench.progressive",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    wanted = next((a for a in sys.argv[2:] if not a.startswith("-")), None)
    for name, module_name in BENCHMARKS.items():
        bench = sub.add_parser(name, help=f"the {name} benchmark")
        if name == wanted:  # import only the benchmark being run
            module = importlib.import_module(module_name)
            module.add_arguments(bench)
            bench.set_defaults(bench_handler=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args.bench_handler(args))
