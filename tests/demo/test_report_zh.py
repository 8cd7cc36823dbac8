"""The report in Chinese (lang="zh"): its words, and CJK glyphs drawn in the plots (a CJK font,
rlhfkit/demo/report.py::cjk_font) — the page's glyphs in headless Chromium are checked on the
quick demo's real report in tests/demo/test_pipeline_zh.py.

Without a CJK font these tests skip, except under CI=true, where they fail: scripts/install.sh
installs Debian's fonts-wqy-microhei."""
import base64
import os
import warnings

import pytest

from rlhfkit.demo.report import TEXT, build_report, cjk_font, plot_png

ROWS = [{"step": i, "score_mean": i / 10} for i in range(1, 4)]


@pytest.fixture(scope="module")
def font():
    name = cjk_font()
    if name is None:
        message = "no font with CJK glyphs (Debian fonts-wqy-microhei): run scripts/install.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI must check the Chinese report)")
        pytest.skip(message)
    return name


def test_a_chinese_title_is_drawn_with_the_cjk_font_and_not_without(font):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)"
        png = plot_png(ROWS, "奖励模型得分", ("score_mean",), xlabel="PPO 迭代", font=font)
    assert base64.b64decode(png).startswith(b"\x89PNG")
    with pytest.warns(UserWarning, match="missing from font"):  # the check can fail
        plot_png(ROWS, "奖励模型得分", ("score_mean",), font="DejaVu Sans")


def test_the_chinese_page_has_chinese_words_and_lang(font):
    page = build_report("rlhfkit 演示", [["正面占比（奖励模型）", 0.4, 0.9]],
                        ["指标", "PPO 之前", "PPO 之后"], ROWS,
                        [{"prompt": "这部电影很", "before": "<b>差</b>", "before_score": -1.0,
                          "after": "好看", "after_score": 2.0}],
                        [{"iteration": 3, "prompt": "刚收到货，感觉", "tokens": ["很", "好"],
                          "kl": [0.1, 0.2], "score": 1.0}], stage="PPO", lang="zh")
    assert '<html lang="zh-CN">' in page
    for words in ("训练前后对比", "训练曲线", "留出开头的续写样例", "一次采样的内部",
                  "<th>开头</th>", "<th>PPO 之前</th>", "第 3 轮迭代，得分 1.000"):
        assert words in page
    assert "&lt;b&gt;差&lt;/b&gt;" in page and "<b>差</b>" not in page  # model text escaped
    assert "Before and after" not in page and "Inside a rollout" not in page
    assert page.count("data:image/png;base64,") == 1


def test_every_language_names_every_curve_and_section():
    assert TEXT["zh"].keys() == TEXT["en"].keys()
    assert len(TEXT["zh"]["curves"]) == len(TEXT["en"]["curves"])
