"""A self-contained HTML report of an RLHF run: curves, before/after table, token-level view.

Everything is inlined (plots as base64 PNG, CSS in the page), so ``report.html`` opens from
disk in any browser with no network. ``lang="zh"`` writes the page's words in Chinese (``TEXT``)
and draws the plots with a font that has CJK glyphs (``cjk_font``). Tests:
tests/demo/test_report.py, tests/demo/test_report_zh.py (CJK glyphs in the plots and, in headless
Chromium, in the page).
"""
from __future__ import annotations

import base64
import html
import io
import math
import shutil
import subprocess
from pathlib import Path

# The per-token rows of a rollout (rollouts.jsonl fields), in this order, each shown where the
# rollout has it: PPO logs all four; the critic-free stage has no values and one advantage per
# response (not per token), so its view is kl and fidelity (the sampler's log-prob against the
# trainer's, |Δ| per token).
TOKEN_ROWS = ("kl", "values", "advantages", "fidelity")

# (title, metric keys tried in order) for the curves over PPO iterations.
CURVES = (
    ("Reward-model score", ("score_mean",)),
    ("KL to reference (nats / response)", ("kl_mean", "kl")),
    ("Policy entropy (nats / token)", ("entropy", "entropy_mean")),
    ("Response length (tokens)", ("response_length_mean", "length_mean")),
)

# The page's words per language: ``{stage}`` is the policy optimiser's name (PPO, GRPO, ...);
# "curves" holds CURVES' titles in CURVES' order.
TEXT = {
    "en": {"html_lang": "en", "before_after": "Before and after", "curves": [c[0] for c in CURVES],
           "curves_heading": "Training curves", "xlabel": "{stage} iteration",
           "samples": "Samples on held-out prompts", "prompt": "prompt",
           "before": "before {stage}", "after": "after {stage}", "score": "score",
           "inside": "Inside a rollout", "iteration": "Iteration {iteration}, score {score}",
           "inside_note": """Response tokens coloured by the per-token KL
penalty term (log π − log π_ref), the critic's value V_t and the GAE advantage A_t (PPO; the
critic-free stage has neither): red positive, blue negative; hover a token for its number. The
last row, fidelity, is
|log π_sampler − log π_trainer|: how far the log-prob the sampler drew the token with is from
the trainer's forward on the same token and weights (0 = the ratio the update sees is exact).
"""},
    "zh": {"html_lang": "zh-CN", "before_after": "训练前后对比",
           "curves": ["奖励模型得分", "与参考模型的 KL（奈特 / 回复）", "策略熵（奈特 / 词元）",
                      "回复长度（词元）"],
           "curves_heading": "训练曲线", "xlabel": "{stage} 迭代", "samples": "留出开头的续写样例",
           "prompt": "开头", "before": "{stage} 之前", "after": "{stage} 之后", "score": "得分",
           "inside": "一次采样的内部", "iteration": "第 {iteration} 轮迭代，得分 {score}",
           "inside_note": """回复的每个词元按以下逐词元量着色：KL 惩罚项
（log π − log π_ref）、评论家（critic）的价值 V_t 和 GAE 优势 A_t（PPO；无评论家的阶段没有后两者）：
红色为正，蓝色为负；鼠标悬停可看数值。最后一行 fidelity 是
|log π_sampler − log π_trainer|：采样器抽取该词元时的对数概率与训练器在同一词元、
同一权重上前向计算的差（0 表示更新所用的比率是精确的）。
"""},
}

# Fonts with CJK glyphs, first found wins (Debian fonts-wqy-microhei, fonts-noto-cjk,
# fonts-wqy-zenhei); otherwise any font fontconfig lists for Chinese.
CJK_FONT_FILES = ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
                  "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
                  "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")


def cjk_font() -> str | None:
    """Family name of an installed font with CJK glyphs, registered with matplotlib; None when
    there is none (scripts/install.sh installs fonts-wqy-microhei)."""
    from matplotlib import font_manager

    paths = [Path(p) for p in CJK_FONT_FILES]
    if shutil.which("fc-list"):
        listed = subprocess.run(["fc-list", ":lang=zh", "file"], capture_output=True, text=True,
                                check=False).stdout
        paths += [Path(line.split(":")[0]) for line in sorted(listed.splitlines()) if line]
    for path in paths:
        if path.suffix.lower() in (".ttf", ".ttc", ".otf") and path.exists():
            font_manager.fontManager.addfont(str(path))
            return font_manager.FontProperties(fname=str(path)).get_name()
    return None


def _series(rows: list[dict], keys: tuple) -> tuple[list, list, str]:
    for key in keys:
        points = [(r["step"], r[key]) for r in rows
                  if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if points:
            return [p[0] for p in points], [p[1] for p in points], key
    return [], [], keys[0]


def plot_png(rows: list[dict], title: str, keys: tuple, xlabel: str = "PPO iteration",
             font: str | None = None) -> str | None:
    """One curve over ``rows``' "step" as a base64 PNG, or None when the metric is absent.
    ``font``: the family to draw the text with (``cjk_font()`` for Chinese titles)."""
    import matplotlib
    matplotlib.use("Agg")

    steps, values, key = _series(rows, keys)
    if not steps:
        return None
    fonts = {"font.family": "sans-serif", "font.sans-serif": [font, "DejaVu Sans"]} if font else {}
    with matplotlib.rc_context(fonts):
        return _plot(steps, values, key, title, xlabel)


def _plot(steps: list, values: list, key: str, title: str, xlabel: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.6, 2.8), dpi=100)
    ax.plot(steps, values, marker="o", markersize=3, color="#2b6cb0")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(key, fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _color(value: float, scale: float) -> str:
    """Blue for negative, red for positive, white at 0; alpha grows with |value| / scale."""
    alpha = min(1.0, abs(value) / scale) * 0.75 if scale > 0 else 0.0
    rgb = "220,38,38" if value > 0 else "37,99,235"
    return f"rgba({rgb},{alpha:.2f})"


def token_view(rollout: dict, field: str) -> str:
    """One rollout's response tokens coloured by a per-token quantity (hover shows the value)."""
    values = rollout.get(field) or []
    tokens = rollout.get("tokens") or []
    scale = max((abs(v) for v in values), default=0.0)
    spans = "".join(
        f'<span class="tok" style="background:{_color(v, scale)}" '
        f'title="{html.escape(field)} = {v:.4f}">{html.escape(t)}</span>'
        for t, v in zip(tokens, values))
    return f'<div class="tokens"><b>{html.escape(field)}</b> (max |v| {scale:.3g}): {spans}</div>'


def rollouts_html(rollouts: list[dict], lang: str = "en") -> str:
    """Rows of rollouts.jsonl as the token-level view: a heading per rollout (iteration, score),
    its prompt, then one coloured row per TOKEN_ROWS field it has."""
    heading = TEXT[lang]["iteration"]
    return "".join(
        "<h3>" + html.escape(heading.format(iteration=r.get("iteration", "?"),
                                            score=f'{r.get("score", float("nan")):.3f}')) + "</h3>"
        f'<div class="prompt">{html.escape(str(r.get("prompt", "")))}</div>'
        + "".join(token_view(r, field) for field in TOKEN_ROWS
                  if isinstance(r.get(field), list))
        for r in rollouts)


def html_table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return html.escape(str(value))


STYLE = """
body{font-family:system-ui,"Noto Sans CJK SC","WenQuanYi Micro Hei",sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#1a202c}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.35em .6em;vertical-align:top;text-align:left}
th{background:#f0f4f8}.plots img{margin:.3em}.tok{white-space:pre-wrap;border-radius:2px}
.tokens{font-family:ui-monospace,monospace;font-size:.85em;margin:.4em 0 .8em;line-height:1.7}
.prompt{color:#4a5568;font-style:italic}.note{color:#4a5568;font-size:.9em}
"""


def build_report(title: str, summary: list[list], summary_headers: list[str],
                 metrics_rows: list[dict], samples: list[dict], rollouts: list[dict],
                 notes: str = "", stage: str = "PPO", lang: str = "en") -> str:
    """The whole page. ``samples``: {prompt, before, before_score, after, after_score};
    ``stage`` names the policy optimiser in the headers ("before PPO"); ``lang`` ("en", "zh")
    the language of the page's own words (``TEXT``)."""
    text = TEXT[lang]
    font = cjk_font() if lang == "zh" else None
    xlabel = text["xlabel"].format(stage=stage)
    plots = [plot_png(metrics_rows, name, keys, xlabel=xlabel, font=font)
             for name, (_, keys) in zip(text["curves"], CURVES)]
    plot_html = "".join(f'<img alt="plot" src="data:image/png;base64,{p}">' for p in plots if p)
    sample_rows = [[s["prompt"], s["before"], s.get("before_score", ""), s["after"],
                    s.get("after_score", "")] for s in samples]
    sample_headers = [text["prompt"], text["before"].format(stage=stage), text["score"],
                      text["after"].format(stage=stage), text["score"]]
    token_html = rollouts_html(rollouts, lang)
    return f"""<!doctype html><html lang="{text["html_lang"]}"><head><meta charset="utf-8">
<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1><p class="note">{html.escape(notes)}</p>
<h2>{text["before_after"]}</h2>{html_table(summary_headers, summary)}
<h2>{text["curves_heading"]}</h2><div class="plots">{plot_html}</div>
<h2>{text["samples"]}</h2>
{html_table(sample_headers, sample_rows)}
<h2>{text["inside"]}</h2><p class="note">{text["inside_note"]}</p>{token_html}
</body></html>"""
