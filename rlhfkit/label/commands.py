"""``rlhfkit label <command>``: parse and dispatch (the commands are in docs/label.md).

    init | config | generate | import | score | add-annotator | disable-annotator |
    enable-annotator | admin-token | serve | stats | export | leaderboard

A user error (bad --db, malformed file, unknown annotator) is one line on stderr, exit 2.
Tests: tests/label/test_commands.py.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from rlhfkit.data import DataError
from rlhfkit.label import store as label_store
from rlhfkit.label.schema import Settings
from rlhfkit.label.store import ORDERS, StoreError
from rlhfkit.models import ModelLoadError

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8765


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhfkit label", description="Collect human rankings of model responses and "
        "export them for `rlhfkit rm` / `rlhfkit dpo`. --db is a SQLite file path or "
        "postgresql://user@host/dbname.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    _queue_settings(_command(sub, "init", "Create a new label store; prints the admin token."),
                    True)
    _queue_settings(_command(sub, "config", "Change the queue settings of a store."), False)
    _task_commands(sub)
    _access_commands(sub)
    _report_commands(sub)
    return parser


def _command(sub, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_)
    p.add_argument("--db", required=True, help="SQLite file or postgresql:// URL")
    return p


def _tag_option(p, prefix: bool) -> None:
    if prefix:  # the same prefix match as `label leaderboard --tag`
        p.add_argument("--tag", default=None, metavar="PREFIX",
                       help="only tasks whose tag starts with PREFIX (e.g. round-1/)")
    else:
        p.add_argument("--tag", default=None, help="name the batch the new tasks belong "
                       "to (tasks.tag, e.g. round-1/sample; up to 100 characters)")


def _queue_settings(p, defaults: bool) -> None:
    d = Settings() if defaults else Settings(None, None, None)
    p.add_argument("--overlap", type=int, default=d.overlap,
                   help="annotators per task (each task is judged this many times)")
    p.add_argument("--order", choices=ORDERS, default=d.order,
                   help="which task comes next: import order, random, or the tasks whose "
                        "candidates the reward model scores closest first (uncertainty)")
    p.add_argument("--lease-seconds", type=float, default=d.lease_seconds,
                   help="an opened task returns to the queue after this long")


def _task_commands(sub) -> None:
    """generate, import, score: tasks and their candidates' scores."""
    p = _command(sub, "generate", "Sample K candidates per prompt from a policy and add a task "
                 "each.")
    p.add_argument("--policy", required=True, help="model folder (e.g. runs/sft/final) or alias")
    p.add_argument("--prompts", required=True, help="JSONL/JSON(.gz) rows with a 'prompt'")
    p.add_argument("--k", type=int, default=4, help="candidates per prompt")
    p.add_argument("--max-new-tokens", type=int, default=64, help="as rollout.max_new_tokens")
    p.add_argument("--temperature", type=float, default=1.0, help="as rollout.temperature")
    p.add_argument("--top-p", type=float, default=1.0, help="as rollout.top_p (1 = off)")
    p.add_argument("--top-k", type=int, default=0, help="as rollout.top_k (0 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=8, help="sequences decoded at once")
    p.add_argument("--template", default="auto", choices=("auto", "chat", "plain"),
                   help="prompt rendering, as data.template")
    p.add_argument("--max-prompt-length", type=int, default=256, help="prompt tokens kept")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--reward-model", default="", help="also score the new candidates with "
                   "this reward model (final/ of `rlhfkit rm`) for --order uncertainty")
    _tag_option(p, prefix=False)
    p = _command(sub, "import", "Add a task per row of a candidates file.")
    p.add_argument("--data", required=True,
                   help='rows {"prompt", "responses": [...], "models": [...] (optional)}')
    p.add_argument("--reward-model", default="", help="score the candidates (see generate)")
    _tag_option(p, prefix=False)
    p = _command(sub, "score", "Score candidates with a reward model (the uncertainty order).")
    p.add_argument("--reward-model", required=True, help="final/ folder of `rlhfkit rm`")
    p.add_argument("--only-missing", action="store_true", help="skip tasks already scored")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def _access_commands(sub) -> None:
    """Annotators, the admin token, and serve."""
    for name, help_ in (("add-annotator", "Add an annotator; prints their login link."),
                        ("disable-annotator", "Disable an annotator's token."),
                        ("enable-annotator", "Enable a disabled annotator again.")):
        p = _command(sub, name, help_)
        p.add_argument("name")
        p.add_argument("--base-url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}",
                       help="the address annotators reach `serve` at (for the link)")
    p = _command(sub, "admin-token", "Replace the admin token; prints the new admin link.")
    p.add_argument("--base-url", default=f"http://{DEFAULT_HOST}:{DEFAULT_PORT}")
    p = _command(sub, "serve", "Serve the labelling page and API (FastAPI on uvicorn).")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="interface to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--admin-token", default="",
                   help="admin token to accept instead of the stored one")
    p.add_argument("--max-body-bytes", type=int, default=64 * 1024,
                   help="requests with a larger body get 413")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes (uvicorn workers); SQLite writes stay one at a time")
    p.add_argument("--store-threads", type=int, default=0,
                   help="threads per process that run store calls (0: 16 on SQLite, where "
                        "the writes waiting in them share a commit; 4 on PostgreSQL)")


def _report_commands(sub) -> None:
    """stats, export, leaderboard: what the judgments say."""
    p = _command(sub, "stats", "Progress, agreement and the per-annotator table.")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    _tag_option(p, prefix=True)
    p = _command(sub, "export", "Write the judgments as training data.")
    p.add_argument("--format", required=True, choices=("ranked", "pairs"),
                   help="ranked: for `rlhfkit rm` (ties as 'ranks'); pairs: for `rlhfkit dpo`")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.add_argument("--keep-all-bad", action="store_true",
                   help="keep tasks most annotators flagged 'all bad'")
    _tag_option(p, prefix=True)
    p = _command(sub, "leaderboard", "Bradley–Terry (Elo-scale) ratings of the models whose "
                 "candidates were ranked, with bootstrap intervals over the judgments.")
    _tag_option(p, prefix=True)
    p.add_argument("--json", action="store_true", help="the rows as JSON")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="resamples of the judgments for the intervals (0: none)")


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def stats_table(summary: dict) -> str:
    agreement = summary["agreement"]
    lines = [f"tasks {summary['tasks']}  complete {summary['complete']} (overlap "
             f"{summary['overlap']})  judgments {summary['judgments']}  order {summary['order']}",
             f"agreement on {agreement['overlapping_tasks']} overlapping tasks: pairwise "
             f"{_fmt(agreement['pairwise'])}  Krippendorff's α (ordinal) "
             f"{_fmt(agreement['krippendorff_alpha_ordinal'])}"]
    columns = ["name", "active", "judgments", "median_seconds", "agreement_with_majority",
               "agreement_with_rm", "first_shown_best_share", "first_shown_best_chance", "all_bad"]
    table = [columns] + [[_fmt(row[c]) for c in columns] for row in summary["annotators"]]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(lines)


def leaderboard_table(rows: list[dict]) -> str:
    if not rows:
        return "no judgment compares candidates of two different models"
    table = [["rank", "model", "Elo", "95% interval", "comparisons"]] + [
        [str(rank), row["model"], f"{row['elo']:.1f}",
         "-" if row["lo"] is None else f"{row['lo']:.1f} – {row['hi']:.1f}",
         str(row["comparisons"])] for rank, row in enumerate(rows, 1)]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.rjust(w) if i in (0, 2, 4) else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in table)


def run_command(args) -> None:
    from rlhfkit.label import sources
    from rlhfkit.label.export import export_lines, summary

    if args.command == "init":
        _, token = label_store.init_store(args.db, Settings(args.overlap, args.order,
                                                            args.lease_seconds))
        print(f"created {args.db}\nadmin link (keep it secret): "
              f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/admin?token={token}")
        return
    if args.command == "serve":  # opens the store where it serves it (serve)
        serve(args)
        return
    store = label_store.open_store(args.db)
    try:
        if args.command == "config":
            changes = {k: v for k, v in (("overlap", args.overlap), ("order", args.order),
                                         ("lease_seconds", args.lease_seconds)) if v is not None}
            print(json.dumps(label_store.update_settings(store, **changes).__dict__))
        elif args.command in ("generate", "import"):
            if args.command == "generate":
                if args.k < 2:
                    raise StoreError(f"--k {args.k}: expected ≥ 2 candidates per prompt")
                sampling = sources.Sampling(args.max_new_tokens, args.temperature, args.top_p,
                                            args.top_k, args.seed)
                added, skipped = sources.generate_candidates(
                    store, args.policy, args.prompts, args.k, sampling, args.batch_size,
                    args.template, args.max_prompt_length, args.device, tag=args.tag)
            else:
                added, skipped = sources.import_candidates(store, args.data, tag=args.tag)
            print(f"added {added} tasks" + (f" (skipped {skipped} prompts with < 2 distinct "
                                            "responses)" if skipped else ""))
            if args.reward_model:
                sources.score_candidates(store, args.reward_model, only_missing=True)
        elif args.command == "score":
            n = sources.score_candidates(store, args.reward_model, device=args.device,
                                         only_missing=args.only_missing)
            print(f"scored {n} tasks")
        elif args.command == "add-annotator":
            token = label_store.add_annotator(store, args.name)
            print(f"{args.base_url.rstrip('/')}/?token={token}")
        elif args.command in ("disable-annotator", "enable-annotator"):
            label_store.set_annotator_active(store, args.name, args.command[0] == "e")
            print(f"{args.name}: {'enabled' if args.command[0] == 'e' else 'disabled'}")
        elif args.command == "admin-token":
            token = label_store.new_token()
            with store.transaction() as conn:
                store.set_meta(conn, "admin_token_hash", label_store.hash_token(token))
            print(f"{args.base_url.rstrip('/')}/admin?token={token}")
        elif args.command == "stats":
            result = summary(store, args.tag)
            if args.tag is not None and not args.json:
                print(f"only tasks whose tag starts with {args.tag!r}")
            print(json.dumps(result, indent=2) if args.json else stats_table(result))
        elif args.command == "export":
            lines = export_lines(store, args.format, args.keep_all_bad, args.tag)
            with open(args.out, "w", encoding="utf-8") as handle:
                handle.writelines(lines)
            print(f"wrote {len(lines)} {args.format} rows to {args.out}")
        elif args.command == "leaderboard":
            from rlhfkit.label.leaderboard import leaderboard

            if args.bootstrap < 0:
                raise StoreError(f"--bootstrap {args.bootstrap}: expected a count ≥ 0")
            rows = leaderboard(store, args.tag, n=args.bootstrap)
            print(json.dumps(rows, indent=2) if args.json else leaderboard_table(rows))
    finally:
        store.close()


def serve(args) -> None:
    """One process: the app over its store, served. ``--workers N`` > 1: each worker process
    opens the store and builds its own app (app.app_from_env); this one only checks the store
    (and migrates an older one, once) and closes it: no connection of its own while the workers
    run. Test: tests/label/test_commands.py (test_serve_holds_only_the_connections_it_serves)."""
    import uvicorn

    from rlhfkit.label.app import create_app, freeze_startup_objects

    if args.store_threads < 0:
        raise StoreError(f"--store-threads {args.store_threads}: expected a count ≥ 0")
    serving = (f"rlhfkit label: serving http://{args.host}:{args.port} (Ctrl-C stops); "
               "annotators log in with the link `label add-annotator` printed")
    if args.workers > 1:
        label_store.open_store(args.db).close()
        print(serving, flush=True)
        os.environ.update(RLHFKIT_LABEL_DB=args.db, RLHFKIT_LABEL_ADMIN_TOKEN=args.admin_token,
                          RLHFKIT_LABEL_MAX_BODY=str(args.max_body_bytes),
                          RLHFKIT_LABEL_STORE_THREADS=str(args.store_threads))
        uvicorn.run("rlhfkit.label.app:app_from_env", factory=True, workers=args.workers,
                    host=args.host, port=args.port, log_level="warning", access_log=False)
        return
    app = create_app(args.db, args.admin_token or None, max_body_bytes=args.max_body_bytes,
                     store_threads=args.store_threads or None)
    print(serving, flush=True)
    freeze_startup_objects()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        run_command(args)
    except (StoreError, DataError, ModelLoadError, OSError) as err:
        print(f"rlhfkit label {args.command}: {err}", file=sys.stderr)
        return 2
    return 0
