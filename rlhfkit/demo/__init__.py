"""The main job (``rlhfkit demo``): reward model then PPO on IMDB, with its HTML report.

- ``settings``: the demo's config and each language's values; ``stages``: stages 1–3 wired;
  ``pipeline``: the run and its summary; ``report``: the self-contained HTML report;
  ``textstats``: distinct-n and repetition of the samples.
"""
