"""``rlhfkit serve-rm``: a reward model saved by ``rlhfkit rm`` served over HTTP (FastAPI on
uvicorn, as the label app), read by ``reward.url`` (rlhfkit/online/rewards.py::UrlReward).

Routes (docs/serve_rm.md):
    POST /score    {"prompts": [...], "responses": [...], "normalize": false}
                   → {"scores": [...]}; a prompt is a string (one user turn) or
                   [{"role", "content"}, ...] (a conversation: system/user/assistant turns),
                   rendered exactly as the RM's training rendered it
                   (RewardScorer.score_messages); normalize → (r − mean) / std from its
                   reward_stats.json. A bad body → 422, a body over max_body_bytes → 413.
    GET  /health   {"status": "ok", "model", "batch_size", "requests", "rows", "forwards"}

Batching: each request joins a queue; one worker takes the oldest, waits up to ``max_wait``
seconds for more to arrive while the batch is below ``batch_size`` rows, and scores them
together in a thread (the event loop keeps accepting requests meanwhile), so concurrent
clients (the processes of a multi-GPU run, several runs) share forwards. A request of more
than ``batch_size`` rows is scored alone in forwards of ``batch_size``. ``forwards`` in
/health counts the model's forward calls. Tests: tests/online/test_reward_server.py.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlhfkit.models.scoring import RewardScorer
from rlhfkit.online.rewards import MAX_REQUEST_ROWS

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8766
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_TEXT_CHARS = 200_000  # per prompt turn or response: far beyond any max_length in tokens
MAX_TURNS = 256


class AddressError(RuntimeError):
    """The server cannot listen on the address it was given."""


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT_CHARS)


class ScoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str | list[Message]] = Field(max_length=MAX_REQUEST_ROWS)
    responses: list[str] = Field(max_length=MAX_REQUEST_ROWS)
    normalize: bool = False

    @model_validator(mode="after")
    def same_lengths_and_sizes(self):
        if len(self.prompts) != len(self.responses):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.responses)} responses: "
                             "expected one prompt per response")
        for i, prompt in enumerate(self.prompts):
            if isinstance(prompt, list) and not 1 <= len(prompt) <= MAX_TURNS:
                raise ValueError(f"prompts[{i}]: expected 1 to {MAX_TURNS} messages")
        for name, texts in (("prompts", self.prompts), ("responses", self.responses)):
            if any(isinstance(t, str) and len(t) > MAX_TEXT_CHARS for t in texts):
                raise ValueError(f"{name}: a text over {MAX_TEXT_CHARS} characters")
        return self

    def messages(self) -> list[tuple]:
        """Each prompt as RewardScorer.score_messages reads it: ((role, content), ...)."""
        return [(("user", p),) if isinstance(p, str) else tuple((m.role, m.content) for m in p)
                for p in self.prompts]


@dataclass
class Job:
    messages: list
    responses: list
    normalize: bool
    future: asyncio.Future


@dataclass
class Batcher:
    """The queue of pending requests and the worker that scores them in batches."""
    scorer: RewardScorer
    batch_size: int
    max_wait: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    counts: dict = field(default_factory=lambda: {"requests": 0, "rows": 0, "forwards": 0})

    def __post_init__(self):
        def count(module, args, output):
            self.counts["forwards"] += 1
        self.scorer.model.register_forward_hook(count)

    async def score(self, messages: list, responses: list, normalize: bool) -> list[float]:
        job = Job(messages, responses, normalize, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return await job.future

    async def next_batch(self, held: Job | None) -> tuple[list[Job], Job | None]:
        """The oldest job and those that join it within max_wait: (batch, held for the next).
        Jobs in one batch share ``normalize``; a job that would overflow the batch waits."""
        loop = asyncio.get_running_loop()
        first = held or await self.queue.get()
        batch, rows = [first], len(first.responses)
        deadline = loop.time() + self.max_wait
        while rows < self.batch_size:
            if self.queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(remaining, 0.002))
                continue
            job = self.queue.get_nowait()
            if rows + len(job.responses) > self.batch_size or job.normalize != first.normalize:
                return batch, job
            batch.append(job)
            rows += len(job.responses)
        return batch, None

    async def work(self) -> None:
        held = None
        while True:
            batch, held = await self.next_batch(held)
            messages = [m for job in batch for m in job.messages]
            responses = [r for job in batch for r in job.responses]
            try:
                scores = await asyncio.to_thread(self.scorer.score_messages, messages, responses,
                                                 self.batch_size, batch[0].normalize)
            except Exception as err:  # noqa: BLE001 - every waiting request hears why
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            self.counts["requests"] += len(batch)
            self.counts["rows"] += len(responses)
            start = 0
            for job in batch:
                if not job.future.done():  # a client that hung up leaves a cancelled future
                    job.future.set_result(scores[start:start + len(job.responses)])
                start += len(job.responses)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise HTTPException(413, f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"request body over {limit} bytes")
    return bytes(body)


def create_app(scorer: RewardScorer, model_dir: str, batch_size: int = 16,
               max_wait: float = 0.005, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    state = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["batcher"] = batcher = Batcher(scorer, batch_size, max_wait)
        worker = asyncio.create_task(batcher.work())
        yield
        worker.cancel()

    app = FastAPI(title="rlhfkit reward model", lifespan=lifespan)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_dir, "batch_size": batch_size,
                **state["batcher"].counts}

    @app.post("/score")
    async def score(request: Request) -> dict:
        # The body is read here, not by a parameter, so its size is checked before parsing.
        try:
            body = ScoreIn.model_validate_json(await read_body(request, max_body_bytes))
        except ValidationError as err:
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])}
                                          for e in err.errors(include_url=False)]) from None
        if not body.responses:
            return {"scores": []}
        scores = await state["batcher"].score(body.messages(), body.responses, body.normalize)
        return {"scores": scores}

    return app


def serve(model_dir: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          batch_size: int = 16, device: str = "auto", dtype: str = "auto",
          max_wait: float = 0.005, max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """Load the reward model, then serve it until interrupted (what `rlhfkit serve-rm` runs).
    AddressError before the model loads when ``host:port`` cannot be bound (in use, unknown
    host)."""
    import uvicorn

    try:  # a taken port fails now, not after the model has loaded
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.create_server((host, port), family=family):
            pass
    except OSError as err:
        raise AddressError(f"cannot listen on {host}:{port}: {err}") from None
    scorer = RewardScorer.from_pretrained(model_dir, device, dtype)
    scorer.model.requires_grad_(False)
    app = create_app(scorer, str(model_dir), batch_size, max_wait, max_body_bytes)
    print(f"rlhfkit serve-rm: serving {model_dir} on http://{host}:{port} (POST /score, "
          f"GET /health; {scorer.device}, batches of up to {batch_size}; Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
