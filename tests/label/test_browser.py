"""The labelling page in a real browser: Playwright for Python driving Debian's Chromium against
a real uvicorn server of ``create_app`` on 127.0.0.1, over a temp SQLite store seeded through
the store API. What a person does: log in by link, rank by keyboard and by drag-and-drop, tie,
undo, skip, "all bad", submit and see the done count move, the K = 2 form, the phone width; a
``<script>`` probe in a prompt and a response shows as text and never runs; the admin page
lists, creates and disables annotators, refuses an annotator's token, and shows the
leaderboard of the models (a model named like a ``<script>`` probe shown as text), by tag.

Without Playwright or /usr/bin/chromium these tests skip, except under CI=true, where they
fail: scripts/install.sh installs both (never ``playwright install``: it downloads a browser).
"""
import contextlib
import json
import os
import random
import socket
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from rlhfkit.label import queue
from rlhfkit.label.leaderboard import leaderboard
from rlhfkit.label.schema import candidates, judgments
from rlhfkit.label.store import add_annotator, add_task, hash_token, init_store

CHROMIUM = "/usr/bin/chromium"
# Headless, and quiet on a closed network: without the networking flags Chromium keeps
# calling home (updates, sync, QUIC probes) and floods the network with refused connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PROBE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


def launch_chromium(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def browser():
    problems = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problems.append("PyPI playwright is not installed")
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing (Debian package chromium)")
    if problems:
        message = "; ".join(problems) + ": run scripts/install.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI must run the browser tests)")
        pytest.skip(message)
    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def serve(db: str):
    """A real uvicorn server of the app on 127.0.0.1 (a free port) in a background thread."""
    import uvicorn

    from rlhfkit.label.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(db), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class Site:
    """A seeded store behind a running server: ``tasks`` maps a prompt to its responses in slot
    (import) order; the page shows them in an order of its own per annotator."""

    def __init__(self, tmp_path, tasks: dict[str, list[str]], names=("alice",)):
        self.db = str(tmp_path / "labels.sqlite")
        self.store, self.admin_token = init_store(self.db)
        rng = random.Random(0)
        with self.store.transaction() as conn:
            for prompt, responses in tasks.items():
                add_task(conn, [["user", prompt]], responses, ["test-model"] * len(responses),
                         [{}] * len(responses), rng)
        self.tokens = {name: add_annotator(self.store, name) for name in names}

    def judgments(self) -> list[dict]:
        """Stored judgments, oldest first, with the ranks keyed by response text."""
        with self.store.engine.connect() as conn:
            texts = {(t, s): x for t, s, x in conn.execute(
                select(candidates.c.task_id, candidates.c.slot, candidates.c.text))}
            rows = conn.execute(select(judgments).order_by(judgments.c.id)).mappings().all()
        return [{"by_text": {texts[(r["task_id"], slot)]: rank
                             for slot, rank in enumerate(r["ranks"])},
                 "flags": r["flags"], "comment": r["comment"], "seconds": r["seconds"]}
                for r in rows]


@pytest.fixture
def site(tmp_path):
    """``with site(tasks, names) as s:`` a seeded store and a server over it (``s.url``)."""
    @contextlib.contextmanager
    def make(tasks, names=("alice",)):
        s = Site(tmp_path, tasks, names)
        try:
            with serve(s.db) as url:
                s.url = url
                yield s
        finally:
            s.store.close()

    return make


def open_page(browser, url, **context_args):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_args)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.errors = errors
    page.goto(url)
    return page


def key_of(page, text: str) -> str:
    """The key (digit, or A/B) the page shows on the card of the response ``text``."""
    card = page.locator("#cands .card").filter(has=page.locator(".text", has_text=text))
    return card.locator(".key").inner_text()


def card(page, text: str):
    return page.locator("#cands .card").filter(has=page.locator(".text", has_text=text))


def drag(page, source, target):
    """Press on ``source``, move in steps (as a hand does), release over ``target``."""
    source.scroll_into_view_if_needed()
    box = source.bounding_box()
    page.mouse.move(box["x"] + 12, box["y"] + box["height"] / 2)
    page.mouse.down()
    to = target.bounding_box()
    page.mouse.move(to["x"] + to["width"] / 2, to["y"] + to["height"] / 2, steps=6)
    page.mouse.up()


def wait_text(page, element_id: str, text: str):
    """Wait until #element_id shows ``text`` (an arrow function: the page's CSP forbids eval)."""
    page.wait_for_function("([id, text]) => document.getElementById(id).textContent === text",
                           arg=[element_id, text])


def wait_done(page, n: int):
    wait_text(page, "done", str(n))


SKY = ["Blue light scatters most in air.", "It reflects the ocean.",
       "Sunlight scatters off molecules; blue the most.", "Blue is the colour of air."]


def test_login_by_link_then_rank_by_keyboard_with_tie_and_undo(browser, site):
    with site({"Why is the sky blue?": SKY, "Second prompt": ["x1", "x2", "x3"]}) as s:
        page = open_page(browser, f"{s.url}/?token={s.tokens['alice']}")
        page.wait_for_selector("#task:not([hidden])")
        assert "token" not in page.url  # the token leaves the address bar (and history)
        assert page.inner_text("#who") == "alice"
        assert page.inner_text("#done") == "0" and page.inner_text("#left") == "2"
        assert page.inner_text("#prompt") == "Why is the sky blue?"

        page.keyboard.press(key_of(page, SKY[1]))  # a slip…
        assert "rank 1" in card(page, SKY[1]).inner_text()
        page.keyboard.press("z")  # …undone
        assert "not ranked" in card(page, SKY[1]).inner_text()
        assert page.is_disabled("#submit")

        page.keyboard.press(key_of(page, SKY[2]))  # best
        page.keyboard.press(key_of(page, SKY[0]))  # second…
        page.keyboard.press("t")  # …and the next one on the same rank
        page.keyboard.press(key_of(page, SKY[3]))
        assert "rank 2 · tie" in card(page, SKY[3]).inner_text()
        assert page.is_disabled("#submit")  # one left
        page.fill("#comment", "digits typed here 1 2 do not rank")
        page.keyboard.press("Escape")
        page.keyboard.press(key_of(page, SKY[1]))
        assert page.locator("#tiers .tier").count() == 3
        time.sleep(0.3)  # some time on the task, measured by the page
        page.keyboard.press("Enter")
        wait_done(page, 1)
        assert page.inner_text("#prompt") == "Second prompt"
        assert page.inner_text("#left") == "1"

        [j] = s.judgments()
        assert j["by_text"] == {SKY[2]: 1, SKY[0]: 2, SKY[3]: 2, SKY[1]: 3}
        assert j["flags"] == [] and j["comment"] == "digits typed here 1 2 do not rank"
        assert 0.3 <= j["seconds"] < 60
        assert page.errors == []


def test_rank_by_drag_and_drop_with_a_tie(browser, site):
    responses = ["alpha answer", "beta answer", "gamma answer"]
    with site({"Drag me": responses}) as s:
        page = open_page(browser, f"{s.url}/?token={s.tokens['alice']}")
        page.wait_for_selector("#task:not([hidden])")
        end = page.locator("#tiers .gap.end")
        drag(page, card(page, "gamma").locator(".card-head"), end)  # a card onto "next rank"
        assert "rank 1" in card(page, "gamma").inner_text()
        drag(page, card(page, "alpha").locator(".card-head"), end)
        assert "rank 2" in card(page, "alpha").inner_text()
        # a chip from "not ranked yet" dropped on rank 1: same rank (a tie)
        drag(page, page.locator("#pool .chip"), page.locator("#tiers .tier").first)
        assert "rank 1 · tie" in card(page, "beta").inner_text()
        # a chip dragged from rank 1 into the gap above it: a rank of its own, first
        drag(page, page.locator("#tiers .tier").first.locator(".chip", has_text="beta"),
             page.locator("#tiers .gap").first)
        assert [t.inner_text().split("\n")[0] for t in page.locator("#tiers .tier").all()] == \
            ["1", "2", "3"]
        assert "rank 1" in card(page, "beta").inner_text()
        page.keyboard.press("z")  # undo the move: the tie is back
        assert "rank 1 · tie" in card(page, "beta").inner_text()
        page.fill("#comment", "kept over a reload")
        page.reload()  # the same task comes back, and so does the work on it
        page.wait_for_selector("#task:not([hidden])")
        assert "rank 1 · tie" in card(page, "beta").inner_text()
        assert "rank 2" in card(page, "alpha").inner_text()
        assert page.input_value("#comment") == "kept over a reload"
        page.click("#submit")
        wait_done(page, 1)
        page.wait_for_selector("#empty:not([hidden])")
        [j] = s.judgments()
        assert j["by_text"] == {"gamma answer": 1, "beta answer": 1, "alpha answer": 2}
        assert j["comment"] == "kept over a reload"
        assert page.errors == []


def test_skip_then_all_bad(browser, site):
    with site({"skip me": ["s1", "s2", "s3"], "all bad here": ["b1", "b2", "b3"]}) as s:
        page = open_page(browser, f"{s.url}/?token={s.tokens['alice']}")
        page.wait_for_selector("#task:not([hidden])")
        assert page.inner_text("#prompt") == "skip me"
        page.keyboard.press("s")
        wait_text(page, "prompt", "all bad here")
        assert page.inner_text("#done") == "0"
        page.keyboard.press("b")  # all bad, nothing ranked: submitted as one tie
        assert page.is_checked("#all-bad")
        page.keyboard.press("Enter")
        wait_done(page, 1)
        page.wait_for_selector("#empty:not([hidden])")  # the skipped task never comes back
        page.reload()
        page.wait_for_selector("#empty:not([hidden])")
        [j] = s.judgments()
        assert j["by_text"] == {"b1": 1, "b2": 1, "b3": 1} and j["flags"] == ["all_bad"]


def test_pairwise_form_for_two_responses(browser, site):
    tasks = {"pair one": ["p1 left", "p1 right"], "pair two": ["p2 left", "p2 right"],
             "pair three": ["p3 left", "p3 right"]}
    with site(tasks) as s:
        page = open_page(browser, f"{s.url}/?token={s.tokens['alice']}")
        page.wait_for_selector("#task:not([hidden])")
        assert page.is_visible("#pair-form") and not page.is_visible("#rank-form")
        assert page.locator("#cands .key").all_inner_texts() == ["A", "B"]
        shown = page.locator("#cands .text").all_inner_texts()
        page.keyboard.press("2")  # B is better
        assert page.get_attribute("[data-choice=b]", "aria-pressed") == "true"
        page.keyboard.press("z")
        assert page.get_attribute("[data-choice=b]", "aria-pressed") == "false"
        assert page.is_disabled("#submit")
        page.keyboard.press("1")  # A is better
        page.keyboard.press("Enter")
        wait_done(page, 1)
        page.click("[data-choice=tie]")
        page.click("#submit")
        wait_done(page, 2)
        page.keyboard.press("x")  # both bad
        page.keyboard.press("Enter")
        wait_done(page, 3)
        page.wait_for_selector("#empty:not([hidden])")
        first, tie, bad = s.judgments()
        assert first["by_text"] == {shown[0]: 1, shown[1]: 2} and first["flags"] == []
        assert set(tie["by_text"].values()) == {1} and tie["flags"] == []
        assert set(bad["by_text"].values()) == {1} and bad["flags"] == ["all_bad"]


def test_model_text_is_shown_as_text_and_never_runs(browser, site):
    with site({PROBE: [PROBE, "plain"], "k3 " + PROBE: [PROBE, "two", "three"]},
              names=("alice", PROBE)) as s:
        page = open_page(browser, f"{s.url}/?token={s.tokens['alice']}")
        page.wait_for_selector("#task:not([hidden])")
        assert page.text_content("#prompt") == PROBE
        assert PROBE in page.locator("#cands .text").all_text_contents()
        assert page.locator("#task script, #task img").count() == 0
        page.keyboard.press("a")
        page.keyboard.press("Enter")
        wait_done(page, 1)
        assert page.text_content("#prompt") == "k3 " + PROBE
        page.keyboard.press("1")  # the probe's snippet appears in the ranking as a chip
        assert page.locator("#task script, #task img").count() == 0
        admin = open_page(browser, f"{s.url}/admin?token={s.admin_token}")
        admin.wait_for_selector("#dash:not([hidden])")
        assert admin.locator("#annotators tbody tr", has_text=PROBE).count() == 1
        assert admin.locator("#annotators script, #annotators img").count() == 0
        time.sleep(0.2)  # an onerror handler would have fired by now
        for p in (page, admin):
            assert p.evaluate("window.__pwned") is None
            assert p.errors == []


def test_phone_width(browser, site):
    with site({"phone prompt": ["first reply " * 12, "second reply", "third reply"]}) as s:
        context = browser.new_context(viewport={"width": 390, "height": 844},
                                      device_scale_factor=2, has_touch=True, is_mobile=True)
        page = context.new_page()
        page.goto(f"{s.url}/?token={s.tokens['alice']}")
        page.wait_for_selector("#task:not([hidden])")
        # nothing wider than the screen; one column; the submit bar stays in reach
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        assert page.is_visible(".phone-bar")
        for text in ("second reply", "third reply", "first reply"):
            card(page, text).locator(".place").tap()
        assert page.inner_text("#pb-status") == "3 of 3 ranked"
        page.locator("#pb-submit").tap()
        wait_done(page, 1)
        [j] = s.judgments()
        assert j["by_text"] == {"second reply": 1, "third reply": 2, "first reply " * 12: 3}


def test_admin_page_lists_creates_and_disables_annotators(browser, site):
    with site({"admin prompt": ["r1", "r2", "r3"]}, names=("alice", "bob")) as s:
        page = open_page(browser, f"{s.url}/admin?token={s.admin_token}")
        page.wait_for_selector("#dash:not([hidden])")
        assert "token" not in page.url
        rows = page.locator("#annotators tbody tr")
        assert [r.get_attribute("data-name") for r in rows.all()] == ["alice", "bob"]
        assert page.inner_text("#s-tasks") == "1"

        page.fill("#new-name", "carol")
        page.click("#create button[type=submit]")
        page.wait_for_selector("#new-link:not([hidden])")
        link = page.inner_text("#new-link-url")
        assert link.startswith(f"{s.url}/?token=")
        page.wait_for_selector("#annotators tbody tr[data-name=carol]")

        carol = open_page(browser, link)
        carol.wait_for_selector("#task:not([hidden])")
        assert carol.inner_text("#who") == "carol"
        carol.keyboard.press("1")
        carol.keyboard.press("2")
        carol.keyboard.press("3")
        carol.keyboard.press("Enter")
        wait_done(carol, 1)

        page.click("#refresh")
        wait_text(page, "s-judgments", "1")
        with page.expect_download() as download:
            page.click("[data-export=ranked]")
        [line] = Path(download.value.path()).read_text().splitlines()
        assert json.loads(line)["prompt"] == "admin prompt"

        page.click("#annotators tbody tr[data-name=carol] button")  # disable
        page.wait_for_selector("#annotators tbody tr[data-name=carol] .pill.off")
        carol.reload()
        carol.wait_for_selector("#login:not([hidden])")
        assert "not valid" in carol.inner_text("#login-error")
        page.click("#annotators tbody tr[data-name=carol] button")  # enable again
        page.wait_for_selector("#annotators tbody tr[data-name=carol] .pill:not(.off)")
        carol.reload()
        carol.wait_for_selector("#empty:not([hidden])")  # back in, nothing left to rank

        # an annotator's token on the admin page: 403, shown as such
        sneaky = open_page(browser, f"{s.url}/admin?token={s.tokens['bob']}")
        sneaky.wait_for_selector("#login:not([hidden])")
        assert "403" in sneaky.inner_text("#login-error")
        status = sneaky.evaluate("""t => fetch('/api/admin/summary',
            {headers: {Authorization: 'Bearer ' + t}}).then(r => r.status)""", s.tokens["bob"])
        assert status == 403
        assert page.errors == [] and carol.errors == []


def test_admin_page_shows_the_leaderboard_by_tag(browser, site):
    """Three "checkpoints" — round-0, round-1 and one named like the probe — in tasks tagged
    round-0/compare (2) and round-1/compare (1); bob ranks round-1 ≻ probe ≻ round-0 in round 0
    and the reverse in round 1. The table is the rows of /api/admin/leaderboard, the probe's
    name is text, the tag filter refits."""
    with site({"seed prompt": ["s1", "s2"]}, names=("bob",)) as s:
        rng = random.Random(0)
        models = ["round-0", "round-1", PROBE]
        with s.store.transaction() as conn:
            for i, tag in enumerate(("round-0/compare", "round-0/compare", "round-1/compare")):
                add_task(conn, [["user", f"compare {i}"]], [f"{m} says {i}" for m in models],
                         models, [{}] * 3, rng, tag=tag)
        bob = queue.annotator_by_token_hash(s.store, hash_token(s.tokens["bob"]))
        order = {"round-0/": ["round-1", PROBE, "round-0"],
                 "round-1/": ["round-0", PROBE, "round-1"]}
        while (task := queue.next_task(s.store, bob)) is not None:
            if task["prompt"] == "seed prompt":
                queue.submit(s.store, bob, task["task_id"], [1, 1])
                continue
            best = order["round-1/" if task["prompt"] == "compare 2" else "round-0/"]
            queue.submit(s.store, bob, task["task_id"], [
                best.index(c["text"].rsplit(" says ", 1)[0]) + 1 for c in task["candidates"]])

        page = open_page(browser, f"{s.url}/admin?token={s.admin_token}")
        page.wait_for_selector("#leaderboard tbody tr[data-model]")
        rows = page.locator("#leaderboard tbody tr")
        expected = leaderboard(s.store)  # what the page asked for: every task, 1,000 resamples
        assert [r.get_attribute("data-model") for r in rows.all()] == \
            [row["model"] for row in expected] == ["round-1", PROBE, "round-0"]
        first = rows.first.locator("td").all_inner_texts()
        assert first == ["1", "round-1", f"{expected[0]['elo']:.1f}",
                         f"{expected[0]['lo']:.1f} – {expected[0]['hi']:.1f}", "6"]  # 2 pairs × 3 tasks
        assert rows.nth(1).locator("td").nth(1).text_content() == PROBE
        assert page.locator("#leaderboard script, #leaderboard img").count() == 0

        page.fill("#lb-tag", "round-1/")
        page.click("#lb-filter button[type=submit]")
        page.wait_for_function("() => document.querySelector('#leaderboard tbody tr')"
                               ".dataset.model === 'round-0'")
        assert [r.get_attribute("data-model") for r in rows.all()] == \
            ["round-0", PROBE, "round-1"]
        assert rows.first.locator("td").last.inner_text() == "2"  # one task: 2 comparisons
        page.fill("#lb-tag", "round-9/")
        page.press("#lb-tag", "Enter")
        page.wait_for_selector("#leaderboard tbody tr:not([data-model])")
        assert "round-9/" in page.inner_text("#leaderboard tbody")
        time.sleep(0.2)  # an onerror handler would have fired by now
        assert page.evaluate("window.__pwned") is None
        assert page.errors == []


DEMO_PROMPT = "Explain to a ten-year-old why the sky is blue."
DEMO = [
    "Sunlight is a mix of all colours. Air molecules scatter short (blue) wavelengths much more "
    "than long (red) ones (Rayleigh scattering), so blue light reaches your eyes from every "
    "part of the sky.",
    "Sunlight has every colour in it. When it passes through the air, the tiny bits of gas "
    "bounce blue light around much more than red light. So wherever you look in the sky, blue "
    "light is coming at you. That's why it looks blue!",
    "The sky is blue because it reflects the colour of the ocean.",
    "Because the air is blue, like how water in a swimming pool looks blue.",
]


def take_screenshots(out_dir: str) -> None:
    """The README's pictures: ``python tests/label/test_browser.py docs/img`` writes
    label.png (desktop, mid-ranking: a best, a second, a third, "same rank" armed) and
    label_phone.png (390 px wide, as a phone shows it)."""
    import tempfile

    from playwright.sync_api import sync_playwright

    out = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        s = Site(Path(tmp), {DEMO_PROMPT: DEMO, "Write a haiku about autumn.": ["a", "b"]})
        chromium = launch_chromium(p)
        with serve(s.db) as url:
            page = open_page(chromium, f"{url}/?token={s.tokens['alice']}",
                             device_scale_factor=1)
            page.set_viewport_size({"width": 1280, "height": 820})
            page.wait_for_selector("#task:not([hidden])")
            for text in (DEMO[1], DEMO[0], DEMO[2]):
                page.keyboard.press(key_of(page, text))
            page.keyboard.press("t")
            page.screenshot(path=out / "label.png")
            phone = chromium.new_context(viewport={"width": 390, "height": 844},
                                         device_scale_factor=2, is_mobile=True, has_touch=True)
            page = phone.new_page()
            page.goto(f"{url}/?token={s.tokens['alice']}")
            page.wait_for_selector("#task:not([hidden])")
            page.keyboard.press(key_of(page, DEMO[1]))
            page.screenshot(path=out / "label_phone.png")
        chromium.close()
        s.store.close()


if __name__ == "__main__":
    import sys

    take_screenshots(sys.argv[1] if len(sys.argv) > 1 else "docs/img")
