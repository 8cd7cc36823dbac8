"""Reward sources for PPO step 2: the score of each whole response, no gradients.

A score comes from a frozen reward model (a ``final/`` folder written by ``rlhfkit rm``), from a
reward model served over HTTP by ``rlhfkit serve-rm`` (``reward.url``, rlhfkit/online/
reward_server.py), from a Python function ``'module:function'`` called as ``function(prompts,
responses, **kwargs) -> list[float]``, or from several of them, summed with weights::

    score = reward.model_weight · RM(prompt, response)
          + reward.url_weight · RM_url(prompt, response)
          + reward.function_weight · f(prompt, response)

What each source reads (tests/online/test_rewards.py): the online loop hands over ``Prompt``
objects. A reward model scores the whole conversation (every turn of a multi-turn prompt),
rendered with the template it was trained with, as ``rlhfkit score`` does. A Python function
gets plain strings: a single-turn prompt is its text as written in the data; a multi-turn one
is the whole conversation, one paragraph per turn in the Anthropic-HH convention ("Human: …",
"Assistant: …"), so no source silently loses the history. Responses are the decoded texts.
``reward.normalize`` standardises the RM score with the mean/std the RM stage saved in
``reward_stats.json`` next to its weights (rlhfkit/models/scoring.py reads it).

The example functions at the bottom are documented reward functions for examples and tests.
"""
from __future__ import annotations

import importlib
import math
import re
import time
import zlib
from typing import Callable

import httpx
import torch


class RewardError(ValueError):
    """A reward source that cannot be loaded or returned the wrong thing."""


# ----------------------------------------------------------------------------- prompts
ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}
EMPTY_PROMPT = (("user", ""),)  # what prompt-free reward models read as the prompt


def conversation_text(messages) -> str:
    """Chat messages ((role, content), ...) → the prompt string Python reward functions read:
    a single user turn is its text unchanged; more turns are one paragraph each, "Human: …" /
    "Assistant: …" / "System: …" (the HH transcript convention, data/formats.py::split_hh)."""
    if len(messages) == 1 and messages[0][0] == "user":
        return messages[0][1]
    return "\n\n".join(f"{ROLE_NAMES.get(role, role)}: {content}" for role, content in messages)


class Prompt(str):
    """A prompt of the online loop: the string reward functions read (``conversation_text``)
    that also carries its chat ``messages``, which a reward model renders as in its training.
    A str, so the loop's prompt lists, logs and samples stay lists of strings."""

    def __new__(cls, messages):
        prompt = super().__new__(cls, conversation_text(messages))
        prompt.messages = tuple(messages)
        return prompt

    def __reduce__(self):  # copies and pickles rebuild from the messages, not the text
        return Prompt, (self.messages,)


def prompt_messages(prompt) -> tuple:
    """The messages of a ``Prompt``; a plain string is a single user turn."""
    return getattr(prompt, "messages", None) or (("user", str(prompt)),)


# ----------------------------------------------------------------------------- python functions
def load_function(spec: str) -> Callable:
    """'package.module:function' → the function, or RewardError saying what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise RewardError(f"reward.function={spec!r} is invalid: expected 'module:function', "
                          "e.g. 'rlhfkit.online.rewards:char_share'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RewardError(f"reward.function={spec!r}: cannot import {module_name}: {err}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise RewardError(f"reward.function={spec!r}: {module_name} has no function {attr!r}")
    return function


class FunctionReward:
    """A Python reward function ('module:function', or the function itself: the Python API's
    reward_fn); checks it returns one finite float per response."""

    def __init__(self, spec: str | Callable, kwargs: dict | None = None):
        if isinstance(spec, str):
            self.spec, self.function = spec, load_function(spec)
        else:
            self.spec, self.function = getattr(spec, "__qualname__", repr(spec)), spec
        self.kwargs = dict(kwargs or {})

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        values = list(self.function([str(p) for p in prompts], list(responses), **self.kwargs))
        if len(values) != len(responses):
            raise RewardError(f"reward function {self.spec} returned {len(values)} values for "
                              f"{len(responses)} responses; expected one float per response")
        scores = torch.tensor([float(v) for v in values], dtype=torch.float32)  # (B,)
        if not torch.isfinite(scores).all():
            raise RewardError(f"reward function {self.spec} returned a non-finite value")
        return scores


# ----------------------------------------------------------------------------- reward models
class ModelReward:
    """A frozen reward model (``rlhfkit.models.scoring.RewardScorer``: the text is rendered exactly as
    in the RM's training, from its reward_stats.json, and re-tokenised with the RM's tokenizer).

    model_input 'pair' scores (prompt messages, response) as a prompted RM saw them: every
    turn of the conversation (``prompt_messages``); 'text' scores
    prompt + response as one text with an empty prompt, for prompt-free RMs (the IMDB
    sentiment RM judges whole reviews: opening + continuation); 'response' scores the response
    alone with an empty prompt (the demo: "is the continuation positive?").
    """

    def __init__(self, path: str, device: str = "auto", dtype: str = "auto",
                 model_input: str = "pair", batch_size: int = 16, normalize: bool = False):
        from rlhfkit.models.scoring import RewardScorer

        self.scorer = RewardScorer.from_pretrained(path, device, dtype)
        self.scorer.model.requires_grad_(False)
        self.model_input, self.batch_size, self.normalize = model_input, batch_size, normalize

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        messages, responses = MODEL_INPUTS[self.model_input](list(prompts), list(responses))
        scores = self.scorer.score_messages(messages, responses, self.batch_size, self.normalize)
        return torch.tensor(scores, dtype=torch.float32)  # (B,)


def as_one_text(prompt: str, response: str) -> str:
    """Prompt and response as one text (model_input 'text'). A continuation that lost its
    leading space (the label store and the loop keep responses stripped) gets one back when it
    starts with an ASCII letter or digit after a non-space, so the words at the seam stay two
    words ("... on D.V.D. and" + "Anunji" → "... and Anunji"); a response that starts with a
    space or punctuation, or any other character (CJK text has no spaces), is joined as it is."""
    first = response[:1]
    if prompt and first and not prompt[-1].isspace() and first.isascii() and first.isalnum():
        return prompt + " " + response
    return prompt + response


MODEL_INPUTS = {  # what a reward model reads: (prompts, responses) → (messages, responses)
    "pair": lambda prompts, responses: ([prompt_messages(p) for p in prompts], responses),
    "text": lambda prompts, responses: ([EMPTY_PROMPT] * len(prompts),
                                        [as_one_text(str(p), r)
                                         for p, r in zip(prompts, responses)]),
    "response": lambda prompts, responses: ([EMPTY_PROMPT] * len(prompts), responses),
}


# ----------------------------------------------------------------------------- reward model servers
MAX_REQUEST_ROWS = 1024  # rows per POST /score: the server refuses more (422), the client splits


def wire_prompt(messages) -> str | list[dict]:
    """Messages → a prompt of POST /score: a single user turn as its text, a conversation as
    [{"role", "content"}, ...] (the chat format every serving stack reads)."""
    if len(messages) == 1 and messages[0][0] == "user":
        return messages[0][1]
    return [{"role": role, "content": content} for role, content in messages]


class UrlReward:
    """A reward model served by ``rlhfkit serve-rm`` at ``url``: the same inputs as ModelReward
    (``model_input``, ``normalize`` applied by the server with its reward_stats.json), posted
    to ``url``/score in requests of at most MAX_REQUEST_ROWS rows.

    A request that fails (no connection, no answer within ``timeout`` seconds, a 5xx or 429
    answer) is tried again after 0.5 s, 1 s, 2 s, … up to ``retries`` times; then, or at once
    for any other non-2xx answer (the request itself is wrong: retrying cannot help),
    RewardError says which URL and what happened in one line. The server is asked for
    /health when the source is built, so a wrong URL stops the run before any rollout.
    Tests: tests/online/test_reward_server.py.
    """

    backoff = 0.5  # seconds before the first retry; doubled after each

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 2,
                 model_input: str = "pair", normalize: bool = False):
        self.url, self.timeout, self.retries = url.rstrip("/"), timeout, retries
        self.model_input, self.normalize = model_input, normalize
        self.client = httpx.Client(timeout=timeout)
        self.request("GET", "/health")

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        messages, responses = MODEL_INPUTS[self.model_input](list(prompts), list(responses))
        scores: list[float] = []
        for start in range(0, len(responses), MAX_REQUEST_ROWS):
            chunk = slice(start, start + MAX_REQUEST_ROWS)
            answer = self.request("POST", "/score", {
                "prompts": [wire_prompt(m) for m in messages[chunk]],
                "responses": responses[chunk], "normalize": self.normalize})
            n = len(responses[chunk])
            values = answer.get("scores") if isinstance(answer, dict) else None
            if not isinstance(values, list) or len(values) != n or \
                    not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
                raise RewardError(f"reward.url={self.url}: POST /score answered "
                                  f"{str(answer)[:200]}; expected {{\"scores\": [{n} finite "
                                  "numbers]}")
            scores += values
        return torch.tensor(scores, dtype=torch.float32)  # (B,)

    def request(self, method: str, path: str, body: dict | None = None):
        """The JSON answer of one request, tried 1 + ``retries`` times; else RewardError."""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.client.request(method, self.url + path, json=body)
            except httpx.TimeoutException:
                what = f"no answer within {self.timeout:g} s (reward.url_timeout)"
                continue
            except httpx.HTTPError as err:  # refused, unknown host, connection dropped, ...
                what = f"cannot connect: {err}" if isinstance(err, httpx.ConnectError) \
                    else f"{type(err).__name__}: {err}"
                continue
            if response.is_success:
                try:
                    return response.json()
                except ValueError:
                    what = f"HTTP {response.status_code} with a body that is not JSON"
                    break
            what = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code < 500 and response.status_code != 429:
                break
        tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
        what = " ".join(str(what).split())  # one line, whatever the server or the OS said
        raise RewardError(f"reward.url={self.url}: {method} {path} failed ({tries}): {what}")


class RewardSources:
    """Weighted sum of named reward sources; ``score`` also returns each part for metrics."""

    def __init__(self, sources: list[tuple[str, float, Callable]]):
        if not sources:
            raise RewardError("no reward source: set reward.model_path (a reward model folder), "
                              "reward.url (a `rlhfkit serve-rm` server) and/or reward.function "
                              "('module:function')")
        self.sources = sources

    def score(self, prompts: list[str], responses: list[str]) -> tuple[torch.Tensor, dict]:
        """(total (B,), {name: (B,)}) on CPU."""
        parts = {name: source(prompts, responses) for name, _, source in self.sources}
        total = sum(weight * parts[name] for name, weight, _ in self.sources)
        return total, parts


def build_reward_sources(reward_config, device: str = "auto", dtype: str = "auto",
                         function: Callable | None = None) -> RewardSources:
    """The sources a ``reward`` config part names (model, url and/or function); the reward model
    goes on ``device`` (e.g. this process's 'cuda:1') in ``dtype`` ('auto', 'float32', …).
    ``function``: a Python reward function in place of reward.function (weighted alike)."""
    sources = []
    if reward_config.model_path:
        sources.append(("model", reward_config.model_weight, ModelReward(
            reward_config.model_path, device, dtype,
            reward_config.model_input, reward_config.batch_size, reward_config.normalize)))
    if reward_config.url:
        sources.append(("url", reward_config.url_weight, UrlReward(
            reward_config.url, reward_config.url_timeout, reward_config.url_retries,
            reward_config.model_input, reward_config.normalize)))
    if function is not None or reward_config.function:
        sources.append(("function", reward_config.function_weight, FunctionReward(
            function if function is not None else reward_config.function,
            reward_config.function_kwargs)))
    return RewardSources(sources)


# ----------------------------------------------------------------------------- example functions
def char_share(prompts: list[str], responses: list[str], chars: str = "aeiou") -> list[float]:
    """Share of the response's non-space characters that are in ``chars`` (0 for an empty one).
    Example: ``reward.function: rlhfkit.online.rewards:char_share``, ``reward.function_kwargs:
    {chars: aeiou}``."""
    wanted = set(chars)
    shares = []
    for response in responses:
        letters = [c for c in response if not c.isspace()]
        shares.append(sum(c in wanted for c in letters) / len(letters) if letters else 0.0)
    return shares


_POSITIVE = set("good great excellent wonderful amazing best love loved loves lovely beautiful "
                "brilliant fantastic fun funny enjoy enjoyed perfect superb masterpiece favorite "
                "favourite touching recommend delightful charming fine nice moving powerful "
                "stunning awesome happy gem classic entertaining impressive".split())
_NEGATIVE = set("bad worst awful terrible boring waste poor horrible stupid dull hate hated "
                "disappointing disappointed mess worse pointless lame annoying ridiculous weak "
                "fails failed sadly unfortunately badly garbage crap avoid nothing".split())
_WORD = re.compile(r"[a-z']+")


def lexicon_sentiment(prompts: list[str], responses: list[str]) -> list[float]:
    """(positive − negative words) / √(words + 1) from small built-in word lists: a crude,
    dependency-free positive-sentiment score for trying PPO on review openings without a
    trained reward model (a learned RM is the real thing: examples/ppo_smollm2.yaml)."""
    scores = []
    for response in responses:
        words = _WORD.findall(response.lower())
        balance = sum(w in _POSITIVE for w in words) - sum(w in _NEGATIVE for w in words)
        scores.append(balance / (len(words) + 1) ** 0.5)
    return scores


def compressibility(prompts: list[str], responses: list[str]) -> list[float]:
    """1 − (deflated size / raw size) of the response's UTF-8 bytes: about 0 for varied text,
    towards 1 for text that repeats itself (0 for an empty response).

    The tiny example's reward (examples/ppo_tiny.yaml). A random tiny model samples almost
    uniformly over 49,152 tokens, so a reward on particular tokens gives it nothing to learn
    from; but its tied embeddings make repeating the current token its likeliest move, and
    "repeat more" is one direction shared by every prompt: the score rises within a minute.
    """
    scores = []
    for response in responses:
        raw = response.encode("utf-8")
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: no header to pay for
        packed = packer.compress(raw) + packer.flush()
        scores.append(1.0 - len(packed) / len(raw) if raw else 0.0)
    return scores
