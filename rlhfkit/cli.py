"""``rlhfkit <stage> --config FILE.yaml [key=value ...]``: parse and dispatch, nothing else."""
from __future__ import annotations

import argparse
import importlib
import sys

from rlhfkit.config import ConfigError, help_lines, load_config
from rlhfkit.data.readers import DataError
from rlhfkit.models.loading import ModelLoadError

# stage → (module, config class). Each module has ``run(config)``.
STAGES = {
    "sft": ("rlhfkit.trainers.sft", "SFTConfig"),
    "dpo": ("rlhfkit.trainers.dpo", "DPOConfig"),
}


def _stage_parser(stage: str, config_cls) -> argparse.ArgumentParser:
    keys = "\n".join(help_lines(config_cls))
    return argparse.ArgumentParser(
        prog=f"rlhfkit {stage}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Run the {stage} stage. Settings come from --config and key=value "
                    "overrides (dotted keys, e.g. train.max_steps=3).",
        epilog="keys (name = default [allowed]):\n" + keys)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        print("usage: rlhfkit {" + ",".join(STAGES) + "} --config FILE.yaml [key=value ...]\n"
              "       rlhfkit <stage> --help   lists every key with its default and doc")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    stage, rest = argv[0], argv[1:]
    module_name, class_name = STAGES[stage]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, class_name)
    parser = _stage_parser(stage, config_cls)
    parser.add_argument("--config", default=None, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(rest)
    try:
        config = load_config(config_cls, args.config, args.overrides)
    except ConfigError as err:
        print(f"rlhfkit {stage}: config error: {err}", file=sys.stderr)
        return 2
    try:
        module.run(config)
    except (DataError, ModelLoadError) as err:  # bad input: say where, no traceback
        print(f"rlhfkit {stage}: {err}", file=sys.stderr)
        return 2
    return 0
