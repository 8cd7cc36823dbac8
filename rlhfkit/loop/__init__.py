"""Iterated online RLHF (``rlhfkit loop``, issue #14): rounds of sample → rank → reward model
→ policy → compare. ``config`` (LoopConfig), ``rounds`` (the five steps, restartable),
``annotate`` (the simulated judge through the label queue; waiting for people),
``pipeline`` (``run``), ``report`` (report.html). Layer 5, beside ``demo``; it uses the
demo's report pieces (rlhfkit/demo/report.py) and nothing else of it."""
