"""The main job (``rlhfkit demo``): reward model then PPO on IMDB, with its HTML report.

- ``pipeline``: the demo's config and run; ``report``: the self-contained HTML report;
  ``textstats``: distinct-n and repetition of the samples.
"""
