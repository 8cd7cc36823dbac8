"""Human feedback: the label store, the ranking web app and its export (``rlhfkit label``).

schema (SQLAlchemy tables) → store (SQLite/PostgreSQL; migrations: an older store brought up
to date on open) → queue (leases, submit) → app (FastAPI) → export (Copeland merge → ranked
lists / pairs); sources (import, generate from the policy, reward-model scores); agreement
(pure: pairwise agreement, Krippendorff's α, per-annotator stats). Guide: docs/label.md.
"""
