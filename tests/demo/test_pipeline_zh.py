"""``rlhfkit demo --lang zh`` (issue 16): the English demo's code path on Chinese data, models and
words. Wiring (no model), the SnowNLP judge by hand, the optional Gemma alias, and the quick run
end to end through the CLI: Chinese prompts through the reward model, PPO and the report, whose
CJK text a headless Chromium must draw as glyphs, not as empty boxes.

Without snownlp, playwright, /usr/bin/chromium or a CJK font the tests that need them skip,
except under CI=true, where they fail: scripts/install.sh installs all four. The Gemma model
(the optional extra) is never needed here."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.config import build
from rlhfkit.demo.judge import judge_fn
from rlhfkit.demo.pipeline import summarize
from rlhfkit.demo.settings import DATA, DemoConfig, LANGUAGES, resolve
from rlhfkit.demo.stages import (policy_settings, review_continuations, reward_model_settings,
                                 sft_settings)
from rlhfkit.trainers import sft
from rlhfkit.online import grpo, ppo
from rlhfkit.trainers import reward

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def require(ok: bool, message: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}: scripts/install.sh installs it (CI must run this test)")
    pytest.skip(message)


def test_lang_zh_swaps_data_and_models_and_keeps_explicit_overrides():
    config = resolve(DemoConfig(lang="zh"))
    assert (config.policy, config.reward_backbone) == ("gemma3-270m", "gemma3-270m")
    rm = build(reward.RMConfig, {"output_dir": "x", **reward_model_settings(config)})
    assert rm.data.train_path == str(DATA / "sentiment_zh/pairs_train.jsonl.gz")
    # stages 1 and 3 as measured on Gemma (LANGUAGES["zh"]["defaults"]): stage 1 on both
    # sentiments; Dr. GRPO with 16 continuations, scores clipped at ±2, the final policy the
    # mean of iterations 3 … 12 × 0.9; evaluated on 64 openings × 4 continuations
    assert (config.sft_steps, config.sft_reviews) == (60, "both")
    built = build(grpo.GRPOConfig, policy_settings(config, Path("rm")))
    assert built.data.eval_path == str(DATA / "sentiment_zh/openings_test.jsonl")
    assert (built.grpo.advantage, built.grpo.num_generations, built.grpo.beta,
            built.grpo.minibatches, built.reward.reward_clip, built.train.batch_size,
            built.train.max_steps, built.train.learning_rate, built.train.lr_scheduler) == \
        ("dr_grpo", 16, 0.05, 2, 2.0, 8, 12, 5e-4, "constant")
    assert (built.final_average_from, built.final_interpolation) == (3, 0.9)
    assert (built.data.max_eval_rows, built.eval_samples_per_prompt) == (64, 4)
    assert resolve(DemoConfig(lang="zh", advantage="grpo")).advantage == "grpo"
    with_ppo = resolve(DemoConfig(lang="zh", algorithm="ppo"))  # explicit
    assert with_ppo.algorithm == "ppo" and with_ppo.policy == "gemma3-270m"
    built = build(ppo.PPOConfig, policy_settings(with_ppo, Path("rm")))
    assert built.critic.model_name == ""  # policy and RM share Gemma's tokenizer: critic from RM
    assert resolve(DemoConfig(lang="zh", policy="tiny-llama")).policy == "tiny-llama"
    quick = resolve(DemoConfig(lang="zh", quick=True))
    assert (quick.policy, quick.reward_backbone, quick.lang) == ("tiny-llama", "tiny-llama", "zh")
    english = resolve(DemoConfig())
    assert (english.policy, english.algorithm, english.rm_steps, english.kl_in_reward) == (
        "smollm2-135m-instruct", "grpo", 60, True)
    assert resolve(DemoConfig(lang="zh")).kl_in_reward is False  # zh keeps β in the loss


def test_the_example_config_is_the_chinese_demo(repo_root):
    from rlhfkit.config import load_config

    config = resolve(load_config(DemoConfig, str(repo_root / "examples/demo_zh.yaml"), []))
    assert (config.lang, config.policy, config.output_dir) == ("zh", "gemma3-270m",
                                                                "runs/demo_zh")
    # it spells out the language's measured defaults: --lang zh alone runs the same demo
    assert config == resolve(DemoConfig(lang="zh", output_dir="runs/demo_zh"))


def test_every_file_a_language_names_exists():
    for language in LANGUAGES.values():
        for key in ("rm_train", "rm_eval", "prompts_train", "prompts_eval"):
            assert (DATA / language[key]).is_file()


def test_review_continuations_cut_both_sides_into_opening_and_rest(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in [
        {"prompt": "", "chosen": "这本书写得很好，值得一读再读", "rejected": "太短了"},
        {"prompt": "", "chosen": "房间干净，服务周到", "rejected": "酒店很差，房间又小又吵，不会再来"},
    ]) + "\n", encoding="utf-8")
    rows = review_continuations(path, opening_chars=4)
    # chosen then rejected, pair by pair; a review no longer than the opening is left out
    assert rows == [{"prompt": "这本书写", "response": "得很好，值得一读再读"},
                    {"prompt": "房间干净", "response": "，服务周到"},
                    {"prompt": "酒店很差", "response": "，房间又小又吵，不会再来"}]
    # sft_reviews=chosen: the preferred side only (Preferred-FT)
    assert review_continuations(path, opening_chars=4, sides=("chosen",)) == [rows[0], rows[1]]
    # stage 1 reads the language's reward-model pairs: English (sft_steps set by hand) too
    assert len(review_continuations(DATA / LANGUAGES["zh"]["rm_train"])) > 5000
    assert review_continuations(DATA / LANGUAGES["en"]["rm_train"])


def test_stage_1_is_chinese_only_and_feeds_stage_3():
    """sft_steps > 0: SFT on the reviews first, its final/ is stage 3's start and reference.
    On by default in Chinese (60 steps, docs/grpo.md "Session 19"), off in English."""
    assert resolve(DemoConfig(lang="zh")).sft_steps == 60
    assert resolve(DemoConfig()).sft_steps == 0
    config = resolve(DemoConfig(lang="zh", output_dir="out", sft_steps=60))
    built = build(sft.SFTConfig, sft_settings(config))
    assert (built.model.name, built.train.max_steps, built.data.template) == (
        "gemma3-270m", config.sft_steps, "plain")
    assert built.data.max_length == 32 + config.max_new_tokens  # continuation-sized responses
    stage3 = build(grpo.GRPOConfig, policy_settings(config, Path("rm"), "out/sft/final"))
    assert stage3.model.name == "out/sft/final"


def test_summary_adds_the_judges_positive_share():
    """Two continuations, one plainly positive, one plainly negative: SnowNLP finds one of two
    positive (P > 0.5), the judge's share is 0.5; the RM's share counts scores > 0."""
    require(judge_fn("snownlp") is not None, "snownlp is not installed")
    rows = [{"response": "非常好，很满意，推荐购买", "score": 1.0, "kl": 0.5, "length": 6},
            {"response": "太差了，很失望，不要买", "score": -1.0, "kl": 1.5, "length": 6}]
    summary = summarize(rows, "snownlp")
    assert summary["snownlp_positive_share"] == 0.5 and summary["positive_share"] == 0.5
    assert summary["kl_mean"] == 1.0 and "snownlp_positive_share" not in summarize(rows)


def test_gemma_alias_without_its_package_is_one_clear_line(monkeypatch, tmp_path):
    import importlib.util

    from rlhfkit.models import loading

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3") else real(name, *a))
    with pytest.raises(loading.ModelLoadError, match=r"pip install 'rlhfkit\[zh\]'"):
        loading.gemma3_dir(str(tmp_path))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, repo_root):
    out = tmp_path_factory.mktemp("demo_zh") / "demo"
    result = subprocess.run([sys.executable, "-m", "rlhfkit", "demo", "--lang", "zh", "--quick",
                             f"output_dir={out}", "reuse_reward_model=false", "sft_steps=4"], cwd=repo_root,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_quick_zh_runs_chinese_text_through_the_whole_path(quick_run):
    out, stdout = quick_run
    assert "sentiment_zh/pairs_train.jsonl.gz" in stdout and "report:" in stdout
    summary = json.loads((out / "summary.json").read_text())
    if judge_fn("snownlp") is not None or os.environ.get("CI") == "true":
        assert 0.0 <= summary["after"]["snownlp_positive_share"] <= 1.0
    rm_config = (out / "reward_model" / "config.yaml").read_text(encoding="utf-8")
    assert "sentiment_zh/pairs_train" in rm_config
    assert "stage 1: supervised fine-tuning" in stdout  # stage 3 starts from its final/
    assert (out / "sft" / "final" / "config.json").is_file()
    assert str(out / "sft" / "final") in (out / "grpo" / "config.yaml").read_text()
    page = (out / "report.html").read_text(encoding="utf-8")
    held_out = [json.loads(line)["prompt"]
                for line in (DATA / "sentiment_zh/openings_test.jsonl").open(encoding="utf-8")]
    assert sum(prompt in page for prompt in held_out[:32]) >= 4  # Chinese samples in the table
    assert '<html lang="zh-CN">' in page and "训练前后对比" in page and "一次采样的内部" in page
    assert "监督微调" in page  # the notes name stage 1
    assert "正面占比（奖励模型）" in page and page.count("data:image/png;base64,") >= 3


def test_quick_zh_report_draws_cjk_glyphs_in_headless_chromium(quick_run, tmp_path):
    """A screenshot of the report's heading, and the proof that CJK characters are drawn: two
    different characters give different pixels (missing glyphs are all the same empty box)."""
    out, _ = quick_run
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    require(sync_playwright is not None, "PyPI playwright is not installed")
    require(Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (Debian package chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto((out / "report.html").as_uri())
        heading = page.locator("h1")
        assert "演示" in heading.inner_text()
        shot = heading.screenshot(path=str(tmp_path / "report_zh_heading.png"))
        page.evaluate("""() => { for (const [id, ch] of [["a", "好"], ["b", "差"]]) {
            const s = document.createElement("span"); s.id = id; s.textContent = ch;
            s.style.cssText = "font-size:48px;display:inline-block;padding:4px";
            document.body.prepend(s); } }""")
        good, bad = page.locator("#a").screenshot(), page.locator("#b").screenshot()
        browser.close()
    assert shot.startswith(b"\x89PNG") and len(shot) > 1000
    assert good != bad, "好 and 差 render the same pixels: no CJK font (fonts-wqy-microhei)"
