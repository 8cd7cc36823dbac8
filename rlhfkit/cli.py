"""``rlhfkit <stage> --config FILE.yaml [key=value ...]``: parse and dispatch, nothing else."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from rlhfkit import STAGES
from rlhfkit.config import ConfigError, help_lines, load_config
from rlhfkit.data.readers import DataError
from rlhfkit.models.loading import ModelLoadError
from rlhfkit.online.rewards import RewardError

# What a user can get wrong (settings, data, model names, reward sources): one line, exit 2.
USER_ERRORS = (ConfigError, DataError, ModelLoadError, RewardError)


def _stage_parser(stage: str, config_cls) -> argparse.ArgumentParser:
    keys = "\n".join(help_lines(config_cls))
    return argparse.ArgumentParser(
        prog=f"rlhfkit {stage}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"Run the {stage} stage. Settings come from --config and key=value "
                    "overrides (dotted keys, e.g. train.max_steps=3).",
        epilog="keys (name = default [allowed]):\n" + keys)


def score_main(argv: list[str]) -> int:
    """``rlhfkit score --model DIR --data FILE [--output FILE]``: one score per row."""
    parser = argparse.ArgumentParser(
        prog="rlhfkit score", description="Score every row of FILE with a reward model saved by "
        "`rlhfkit rm` (its final/ folder): {\"score\"} per prompt+response row, {\"scores\"} "
        "(best first) per pair or ranked list; a summary goes to stderr.")
    parser.add_argument("--model", required=True, help="reward model folder (final/)")
    parser.add_argument("--data", required=True, help="JSONL/JSON(.gz) rows to score")
    parser.add_argument("--output", default=None, help="output JSONL (default: stdout)")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    from rlhfkit.models.scoring import score_file

    try:
        summary = score_file(args.model, args.data, args.output, args.batch_size, args.device)
    except USER_ERRORS as err:
        print(f"rlhfkit score: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary), file=sys.stderr)
    return 0


def serve_rm_main(argv: list[str]) -> int:
    """``rlhfkit serve-rm --model DIR [--host H] [--port P]``: a reward model over HTTP."""
    from rlhfkit.online import reward_server

    parser = argparse.ArgumentParser(
        prog="rlhfkit serve-rm", description="Serve a reward model saved by `rlhfkit rm` (its "
        "final/ folder) over HTTP: POST /score {\"prompts\", \"responses\"} -> {\"scores\"}, "
        "GET /health. Online stages read it with reward.url (docs/serve_rm.md).")
    parser.add_argument("--model", required=True, help="reward model folder (final/)")
    parser.add_argument("--host", default=reward_server.DEFAULT_HOST,
                        help="interface to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=reward_server.DEFAULT_PORT)
    parser.add_argument("--batch-size", type=int, default=16,
                        help="rows per forward pass; concurrent requests are gathered up to it")
    parser.add_argument("--max-wait-ms", type=float, default=5.0,
                        help="how long a batch below --batch-size waits for more requests")
    parser.add_argument("--max-body-bytes", type=int, default=reward_server.MAX_BODY_BYTES,
                        help="requests with a larger body get 413")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="auto",
                        choices=("auto", "float32", "bfloat16", "float16"))
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.max_wait_ms < 0 or args.max_body_bytes < 1:
        parser.error("--batch-size and --max-body-bytes must be >= 1, --max-wait-ms >= 0")
    try:
        reward_server.serve(args.model, args.host, args.port, args.batch_size, args.device,
                            args.dtype, args.max_wait_ms / 1000, args.max_body_bytes)
    except (*USER_ERRORS, reward_server.AddressError) as err:
        print(f"rlhfkit serve-rm: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "score":
        return score_main(argv[1:])
    if argv and argv[0] == "serve-rm":
        return serve_rm_main(argv[1:])
    if argv and argv[0] == "label":  # human rankings: rlhfkit/label/commands.py
        from rlhfkit.label.commands import main as label_main

        return label_main(argv[1:])
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGES:
        print("usage: rlhfkit {" + ",".join(STAGES) + "} --config FILE.yaml [key=value ...]\n"
              "       rlhfkit demo [--quick] [--lang zh]   the whole pipeline (English, Chinese)\n"
              "       rlhfkit score --model DIR --data FILE [--output FILE]\n"
              "       rlhfkit serve-rm --model DIR [--host H] [--port P]   reward model over HTTP\n"
              "       rlhfkit label {init,generate,import,add-annotator,serve,stats,export,...}\n"
              "       rlhfkit <stage> --help   lists every key with its default and doc")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    stage, rest = argv[0], argv[1:]
    module_name, class_name = STAGES[stage]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, class_name)
    parser = _stage_parser(stage, config_cls)
    parser.add_argument("--config", default=None, help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    if "quick" in getattr(config_cls, "__dataclass_fields__", {}):
        parser.add_argument("--quick", action="store_true", help="the same as quick=true")
    if "lang" in getattr(config_cls, "__dataclass_fields__", {}):
        parser.add_argument("--lang", default=None, help="the same as lang=LANG (demo: en, zh)")
    args = parser.parse_args(rest)
    overrides = args.overrides + (["quick=true"] if getattr(args, "quick", False) else []) + \
        ([f"lang={args.lang}"] if getattr(args, "lang", None) else [])
    try:
        config = load_config(config_cls, args.config, overrides)
    except ConfigError as err:
        print(f"rlhfkit {stage}: config error: {err}", file=sys.stderr)
        return 2
    try:
        module.run(config)
    except USER_ERRORS as err:  # bad input: say where, no traceback
        print(f"rlhfkit {stage}: {err}", file=sys.stderr)
        return 2
    finish_processes()
    return 0


def finish_processes() -> None:
    """A distributed run (accelerate launch, torchrun) ends together: every process waits for
    the others, then destroys the process group before the interpreter exits. Left to the exit,
    gloo's threads were torn down while another process still talked to them, and a process
    aborted after a finished stage ("terminate called without an active exception": seen in
    tests/e2e/test_fsdp2.py, twice in one CI run). No-op in a single process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
