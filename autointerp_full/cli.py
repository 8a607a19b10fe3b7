"""Command line: flags are generated from RunConfig; heavy imports wait until after parsing."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from autointerp_full.config import ConfigError, RunConfig, config_fields
from autointerp_full.errors import UserError

# `python -m autointerp_full <command> ...`: commands other than a run, each a module with
# main(argv) -> exit code. Anything else is a run's MODEL SPARSE_MODEL ... as before.
SUBCOMMANDS = {
    "compare": "autointerp_full.compare",
    "export": "autointerp_full.report.export",
}
SUBCOMMANDS_HELP = """other commands:
  compare RUN_A RUN_B   the score changes from run A to run B, with intervals (compare --help)
  export RUN            CSV, JSONL and Neuronpedia files of a finished run (export --help)"""

GROUP_TITLES = {
    "core": "Core model parameters",
    "explainer": "Explainer parameters",
    "prompts": "Prompt customisation",
    "scoring": "Scoring parameters",
    "dataset": "Dataset and caching parameters",
    "examples": "Example construction parameters",
    "technical": "Technical parameters",
}


class OneLineParser(argparse.ArgumentParser):
    """Errors are one line naming the flag, exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _show_default(f: dataclasses.Field) -> str:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value: Any = f.default_factory()  # type: ignore[misc]
    else:
        value = f.default
    if f.name == "num_gpus":
        return "all visible GPUs"
    return "None" if value is None else str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m autointerp_full",
        description="Explain and score the latents of sparse autoencoders and transcoders.",
        epilog=SUBCOMMANDS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in config_fields():
        meta = f.metadata
        help_text = f"{meta['help']} (default: {_show_default(f)})".replace("%", "%%")
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        if "choices" in meta:
            kwargs["choices"] = meta["choices"]
            kwargs["metavar"] = f.name.upper()
            kwargs["help"] = help_text.replace(
                " (default:", f" Choices: {', '.join(meta['choices'])}. (default:", 1
            )
        if "nargs" in meta:
            kwargs["nargs"] = meta["nargs"]
        if "type" in meta:
            kwargs["type"] = meta["type"]
        group = groups[meta["group"]]
        if meta.get("positional"):
            # The spec shows MODEL and SPARSE_MODEL as positionals and lists --model too.
            group.add_argument(f.name, nargs="?", metavar=f.name.upper(), **kwargs)
            group.add_argument(
                f"--{f.name}", dest=f.name, help=argparse.SUPPRESS, default=argparse.SUPPRESS
            )
        elif f.type in ("bool", bool):
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(f"--{f.name}", **kwargs)
    return parser


def parse_config(argv: Sequence[str] | None = None) -> RunConfig:
    parser = build_parser()
    ns = parser.parse_args(argv)
    cfg = RunConfig(**vars(ns))
    try:
        cfg.validate()
    except ConfigError as err:
        parser.error(str(err))
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        return int(importlib.import_module(SUBCOMMANDS[args[0]]).main(args[1:]))
    cfg = parse_config(args)
    from autointerp_full.logs import setup_logging
    from autointerp_full.run import run_all

    setup_logging(cfg.verbose)
    try:
        return run_all(cfg)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; rerun the same command to resume\n")
        return 130
    except UserError as err:
        # One line, whatever the message carries (a wrapped library error may hold newlines).
        sys.stderr.write(f"autointerp_full: error: {' '.join(str(err).split())}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
