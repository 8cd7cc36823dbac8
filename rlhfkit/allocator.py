"""Allocator settings applied before the process starts (the entry point re-execs itself).

glibc's malloc returns large blocks (logits, activations) to the kernel and page-faults them in
again every step: on our 2-core VMs that is 30–40% of a training step. tcmalloc (Debian
libtcmalloc-minimal4) or glibc tunables that raise the mmap/trim thresholds keep the memory in
the process. Both only work when set before the interpreter starts, hence the re-exec.
Set RLHFKIT_ALLOCATOR=system to keep the platform default.
"""
from __future__ import annotations

import glob
import os
import sys

MARKER = "RLHFKIT_ALLOCATOR_APPLIED"
TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
TCMALLOC_GLOBS = ("/usr/lib/*/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4")


def find_tcmalloc() -> str | None:
    for pattern in TCMALLOC_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def allocator_env(environ: dict) -> dict:
    """The environment to re-exec with, or {} when nothing should change."""
    choice = environ.get("RLHFKIT_ALLOCATOR", "auto")
    if choice == "system" or environ.get(MARKER) or not sys.platform.startswith("linux"):
        return {}
    env = dict(environ)
    env[MARKER] = "1"
    tcmalloc = find_tcmalloc() if choice in ("auto", "tcmalloc") else None
    if tcmalloc:
        env["LD_PRELOAD"] = ":".join(filter(None, [environ.get("LD_PRELOAD"), tcmalloc]))
    else:
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [environ.get("GLIBC_TUNABLES"), TUNABLES]))
    return env


def reexec_with_fast_allocator(argv: list[str]) -> None:
    """Replace this process by the same command under the fast allocator (no-op if applied)."""
    env = allocator_env(dict(os.environ))
    if env:
        os.execve(sys.executable, [sys.executable, "-m", "rlhfkit", *argv], env)
