"""``rlhfkit serve-rm`` (rlhfkit/online/reward_server.py) and ``reward.url``
(rlhfkit/online/rewards.py::UrlReward), against a real server: the command started in a
subprocess on a free port with the tiny reward model (tests/online/conftest.py::tiny_rm).

Served scores equal RewardScorer's local ones (single- and multi-turn prompts, model_input,
normalize); concurrent requests share forwards; bad bodies get 422/413; a server that does
not answer, refuses or fails gets retried, then one RewardError line; an unreachable URL stops
`rlhfkit ppo` with exit 2 and one line; serve-rm + reward.url drive a PPO tiny run."""
from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from rlhfkit.cli import main
from rlhfkit.config import ConfigError, load_config
from rlhfkit.models.scoring import RewardScorer
from rlhfkit.online import ppo
from rlhfkit.online.loop import RewardPart
from rlhfkit.online.rewards import (
    MAX_REQUEST_ROWS,
    Prompt,
    RewardError,
    UrlReward,
    as_one_text,
    build_reward_sources,
)
from rlhfkit.trainers import common

TWO_TURNS = (("system", "Be brief."), ("user", "Name a fruit that is yellow."),
             ("assistant", "A banana."), ("user", "And one that is red?"))
PROMPTS = [Prompt(TWO_TURNS), Prompt((("user", "Name a fruit."),)), "A plain string prompt"]
RESPONSES = ["A strawberry.", "A pear.", "and its reply"]
BATCH_SIZE, MAX_BODY = 8, 200_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve(tiny_rm):
    """serve(device) → the URL of a `rlhfkit serve-rm` subprocess on that device (one each)."""
    servers: dict = {}

    def start(device: str) -> str:
        if device not in servers:
            port = free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "rlhfkit", "serve-rm", "--model", tiny_rm, "--port",
                 str(port), "--batch-size", str(BATCH_SIZE), "--max-wait-ms", "100",
                 "--max-body-bytes", str(MAX_BODY), "--device", device, "--dtype", "float32"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            url = f"http://127.0.0.1:{port}"
            servers[device] = process, url
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, process.stdout.read()
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "serve-rm did not start within 60 s"
                time.sleep(0.1)
        return servers[device][1]

    yield start
    for process, _ in servers.values():
        process.terminate()
        process.wait(timeout=10)
        process.stdout.close()


def health(url: str) -> dict:
    return httpx.get(url + "/health").json()


# ----------------------------------------------------------------------------- scores
def test_served_scores_equal_local_scores(serve, tiny_rm, device):
    url = serve(device)
    scorer = RewardScorer.from_pretrained(tiny_rm, device, "float32")
    messages = [TWO_TURNS, (("user", "Name a fruit."),), (("user", "A plain string prompt"),)]
    for normalize in (False, True):
        expected = scorer.score_messages(messages, RESPONSES, normalize=normalize)
        served = UrlReward(url, normalize=normalize)(PROMPTS, RESPONSES).tolist()
        assert served == pytest.approx(expected, abs=1e-5)
    raw, normalized = (UrlReward(url, normalize=n)(PROMPTS, RESPONSES) for n in (False, True))
    assert normalized.tolist() == pytest.approx(((raw - 0.25) / 2.0).tolist(), abs=1e-5)
    # Prompt-free RMs: the server reads what ModelReward's model_input hands it.
    text = UrlReward(url, model_input="text")(PROMPTS[1:], RESPONSES[1:]).tolist()
    assert text == pytest.approx(scorer(["", ""], [as_one_text(p, r) for p, r in
                                                   zip(PROMPTS[1:], RESPONSES[1:])]), abs=1e-5)


def test_concurrent_requests_share_forwards(serve, tiny_rm, device):
    url = serve(device)
    scorer = RewardScorer.from_pretrained(tiny_rm, device, "float32")
    rows = [(f"Opening number {i}", " and a reply" * (i + 1)) for i in range(BATCH_SIZE)]
    before = health(url)

    def post(row):
        return httpx.post(url + "/score", json={"prompts": [row[0]], "responses": [row[1]]},
                          timeout=30).json()["scores"][0]

    with ThreadPoolExecutor(len(rows)) as pool:
        served = list(pool.map(post, rows))
    after = health(url)
    # Each request gets its own row's score back ...
    assert served == pytest.approx(scorer([p for p, _ in rows], [r for _, r in rows]), abs=1e-5)
    # ... and the 8 requests were scored in fewer forwards than 8.
    assert after["requests"] - before["requests"] == len(rows)
    assert 1 <= after["forwards"] - before["forwards"] < len(rows), (before, after)


def test_a_request_over_the_batch_size_is_scored_in_forwards_of_batch_size(serve, device):
    url = serve(device)
    before = health(url)
    n = 2 * BATCH_SIZE + 1
    scores = httpx.post(url + "/score", json={"prompts": ["p"] * n, "responses": ["r"] * n},
                        timeout=30).json()["scores"]
    assert scores == pytest.approx([scores[0]] * n, abs=1e-5)  # the same row n times
    assert health(url)["forwards"] - before["forwards"] == 3  # ceil(17 / 8)


# ----------------------------------------------------------------------------- bad requests
@pytest.mark.parametrize("body, where", [
    ({"prompts": ["a", "b"], "responses": ["x"]}, "2 prompts but 1 responses"),
    ({"prompts": [[{"role": "robot", "content": "hi"}]], "responses": ["x"]}, "role"),
    ({"prompts": [[]], "responses": ["x"]}, "expected 1 to"),
    ({"prompts": ["a"]}, "responses"),
    ({"prompts": ["a"], "responses": ["x"], "temperature": 1}, "temperature"),
    ({"prompts": ["a"] * (MAX_REQUEST_ROWS + 1), "responses": ["x"] * (MAX_REQUEST_ROWS + 1)},
     "at most 1024"),
    ("not json", "JSON"),
])
def test_bad_bodies_get_422(serve, body, where):
    url = serve("cpu")
    content = body if isinstance(body, str) else json.dumps(body)
    answer = httpx.post(url + "/score", content=content,
                        headers={"content-type": "application/json"})
    assert answer.status_code == 422 and where in answer.text, answer.text


def test_body_over_the_limit_gets_413_and_empty_lists_score_nothing(serve):
    url = serve("cpu")
    big = httpx.post(url + "/score", json={"prompts": ["a"], "responses": ["x" * MAX_BODY]})
    assert big.status_code == 413
    assert httpx.post(url + "/score", json={"prompts": [], "responses": []}).json() == \
        {"scores": []}
    assert health(url)["status"] == "ok"


# ----------------------------------------------------------------------------- failures
class Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next (status, body) of the server's ``answers``."""

    def handle_one(self):
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        self.server.seen.append(self.path)
        status, body = self.server.answers.pop(0)
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = handle_one

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    """start(answers) → the URL of a local HTTP server giving those answers in turn."""
    servers = []

    def start(answers: list) -> tuple[str, list]:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
        server.answers, server.seen = list(answers), []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", server.seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_failed_requests_are_retried_with_backoff(scripted):
    ok = (200, {"status": "ok"})
    url, seen = scripted([(503, {"detail": "loading"}), ok, (500, {"detail": "oom"}),
                          (429, {"detail": "busy"}), (200, {"scores": [0.5, -1.0]})])
    reward = UrlReward(url, timeout=5, retries=2)  # /health: 503, then 200
    start = time.monotonic()
    assert reward(["a", "b"], ["x", "y"]).tolist() == [0.5, -1.0]  # 500, 429, then 200
    assert time.monotonic() - start >= 0.5 + 1.0  # the backoff before each retry
    assert seen == ["/health", "/health", "/score", "/score", "/score"]


def test_errors_are_one_line_naming_the_url_and_what_happened(scripted):
    url, seen = scripted([(200, {"status": "ok"}), (422, {"detail": "prompts: bad"})])
    with pytest.raises(RewardError) as caught:  # a 4xx answer is not retried
        UrlReward(url, retries=3)(["a"], ["x"])
    assert str(caught.value) == f'reward.url={url}: POST /score failed (1 attempt): ' \
        'HTTP 422: {"detail": "prompts: bad"}'
    url, _ = scripted([(200, {"status": "ok"}), (200, {"scores": [1.0]})])
    with pytest.raises(RewardError, match=r"POST /score answered .*expected \{\"scores\": "
                                          r"\[2 finite numbers\]\}"):
        UrlReward(url)(["a", "b"], ["x", "y"])
    url, _ = scripted([(503, {"detail": "down"})] * 2)
    with pytest.raises(RewardError, match=r"GET /health failed \(2 attempts\): HTTP 503"):
        UrlReward(url, retries=1)


def test_a_server_that_never_answers_times_out():
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(RewardError) as caught:
            UrlReward(url, timeout=0.3, retries=1)
        assert time.monotonic() - start < 5
    assert str(caught.value) == f"reward.url={url}: GET /health failed (2 attempts): no answer " \
        "within 0.3 s (reward.url_timeout)"


def test_unreachable_url_stops_the_run_with_one_line(repo_root, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = main(["ppo", "--config", str(repo_root / "examples/ppo_tiny.yaml"),
                 f"output_dir={tmp_path / 'run'}", f"data.train_path={repo_root}/data/tiny/"
                 "prompts.jsonl", "reward.function=", f"reward.url={url}", "reward.url_retries=0",
                 "model.device=cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("rlhfkit ppo:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"rlhfkit ppo: reward.url={url}: GET /health failed (1 attempt): cannot connect: "), err


def test_serve_rm_user_errors_are_one_line(tiny_rm, tmp_path, capsys):
    assert main(["serve-rm", "--model", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"rlhfkit serve-rm: {tmp_path / 'missing'}/" \
        "reward_stats.json not found: expected a final/ folder written by `rlhfkit rm`\n"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve-rm", "--model", tiny_rm, "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rlhfkit serve-rm: cannot listen on 127.0.0.1:{port}: [Errno ") and \
        err.count("\n") == 1, err


def test_url_config_checks(repo_root, tmp_path):
    with pytest.raises(ConfigError, match="reward.url='localhost:8766' is invalid"):
        load_config(ppo.PPOConfig, str(repo_root / "examples/ppo_tiny.yaml"),
                    ["reward.url=localhost:8766"])
    with pytest.raises(ConfigError, match="reward.url_timeout=0"):
        load_config(ppo.PPOConfig, str(repo_root / "examples/ppo_tiny.yaml"),
                    ["reward.url=http://127.0.0.1:1", "reward.url_timeout=0"])


# ----------------------------------------------------------------------------- in the online loop
def test_url_and_function_scores_sum_with_weights(serve, tiny_rm):
    url = serve("cpu")
    sources = build_reward_sources(RewardPart(
        url=url, url_weight=2.0, function="rlhfkit.online.rewards:char_share",
        function_weight=0.5), device="cpu", dtype="float32")
    total, parts = sources.score(PROMPTS, RESPONSES)
    assert set(parts) == {"url", "function"}
    assert parts["url"].tolist() == pytest.approx(
        RewardScorer.from_pretrained(tiny_rm, "cpu", "float32").score_messages(
            [TWO_TURNS, (("user", "Name a fruit."),), (("user", PROMPTS[2]),)], RESPONSES),
        abs=1e-5)
    assert total.tolist() == pytest.approx((2.0 * parts["url"] + 0.5 * parts["function"]).tolist())


@pytest.mark.parametrize("stage, rollout_rows", [("ppo", 16), ("grpo", 8 * 4)])
def test_serve_rm_and_reward_url_drive_a_ppo_tiny_run(serve, repo_root, tmp_path, on_device,
                                                      device, stage, rollout_rows):
    url = serve(device)
    before = health(url)
    out = tmp_path / stage
    assert main([stage, "--config", str(repo_root / f"examples/{stage}_tiny.yaml"),
                 f"output_dir={out}", f"data.train_path={repo_root}/data/tiny/prompts.jsonl",
                 "reward.function=", f"reward.url={url}", "train.max_steps=2", "sample_every=0",
                 *on_device]) == 0
    rows = common.read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(isinstance(r["score_mean"], float) for r in rows)
    # Every rollout (2 iterations × train.batch_size 16, GRPO's 8 prompts × 4 samples) was
    # scored by the server.
    assert health(url)["rows"] - before["rows"] == 2 * rollout_rows
