"""The generation engine: dynamic batching, per-request limits, streaming, stop strings,
a bounded queue, and swapping the model version without failing requests in flight."""

from __future__ import annotations

import time

import pytest

from selftrain.registry import activate
from selftrain.serve.engine import EngineBusy, GenerationEngine

PROMPTS = ["def add(a, b):", "Write a Python function `is_even(n)` that returns True for even numbers.",
           "for item in items:", "assert slugify('Hello World') == 'hello-world'"]
# The tiny random model repeats a prompt's last token, so raw prompts (no chat template)
# give each row a different answer: enough to see rows kept apart and in order.


def _ids(engine, text):
    return engine.encode(engine.render_chat([{"role": "user", "content": text}]))


def _wait_for(condition, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_waiting_requests_share_one_batch_and_keep_their_own_limits(engine, block_worker):
    release, entered = block_worker(engine)
    first = engine.submit(_ids(engine, "warm up"), 2)
    assert entered.wait(30)
    tickets = [engine.submit(_ids(engine, p), max_tokens=2 + i) for i, p in enumerate(PROMPTS)]
    release.set()
    results = [t.future.result(timeout=60) for t in tickets]
    first.future.result(timeout=60)
    assert [r.batch_size for r in results] == [len(PROMPTS)] * len(PROMPTS)
    assert engine.counters["batches"] == 2 and engine.counters["batch_rows"] == len(PROMPTS) + 1
    for i, r in enumerate(results):
        assert r.completion_tokens <= 2 + i
        assert r.finish_reason == ("length" if r.completion_tokens == 2 + i else "stop")
        assert r.prompt_tokens == len(_ids(engine, PROMPTS[i])) and r.model_version is None


def test_batched_answers_equal_answers_one_at_a_time(settings, sqlite_db):
    settings.dtype = "float32"  # bf16 rounding may differ with the batch shape; the logic may not
    engine = GenerationEngine(settings, sqlite_db).start()
    try:
        alone = [engine.submit(engine.encode(p), 12).future.result(timeout=60).text for p in PROMPTS]
        together = [t.future.result(timeout=60).text
                    for t in [engine.submit(engine.encode(p), 12) for p in PROMPTS]]
    finally:
        engine.stop()
    assert together == alone and len(set(alone)) == len(PROMPTS)


def test_streamed_pieces_make_the_text_and_stop_strings_cut_it(engine):
    pieces: list[str] = []
    full = engine.submit(engine.encode("hello"), 8, on_text=pieces.append).future.result(timeout=60)
    assert "".join(pieces) == full.text and len(pieces) > 1 and full.finish_reason == "length"
    assert full.text.startswith("hellohello")  # see PROMPTS
    cut_pieces: list[str] = []
    cut = engine.submit(engine.encode("hello"), 8, stop=("ohe",), on_text=cut_pieces.append).future.result(60)
    assert cut.text == "hell" and cut.finish_reason == "stop"
    assert "".join(cut_pieces) == "hell"  # nothing past the stop string was ever streamed


def test_a_full_queue_refuses_at_once(settings, sqlite_db, block_worker):
    settings.serve_queue_size = 2
    engine = GenerationEngine(settings, sqlite_db).start()
    release, entered = block_worker(engine)
    try:
        running = engine.submit(_ids(engine, "a"), 2)
        assert entered.wait(30)
        waiting = [engine.submit(_ids(engine, "b"), 2), engine.submit(_ids(engine, "c"), 2)]
        with pytest.raises(EngineBusy):
            engine.submit(_ids(engine, "d"), 2)
        waiting[1].cancel()  # its client went away: it is dropped, never generated
        release.set()
        assert running.future.result(60).completion_tokens <= 2
        assert waiting[0].future.result(60).batch_size == 1
    finally:
        release.set()
        engine.stop()
    assert engine.counters["rejected"] == 1 and engine.counters["batch_rows"] == 2


def test_a_new_version_is_swapped_in_without_failing_requests_in_flight(engine, sqlite_db, add_version,
                                                                         block_worker):
    version = add_version(sqlite_db)
    release, entered = block_worker(engine)
    in_flight = engine.submit(_ids(engine, PROMPTS[0]), 8)
    assert entered.wait(30)
    with sqlite_db.session() as session:
        activate(session, version)
    engine.refresh_version()  # starts loading while the batch holds the old model
    release.set()
    old = in_flight.future.result(timeout=60)
    assert old.model_version is None and old.finish_reason in ("stop", "length")
    _wait_for(lambda: engine.version_id == version)
    new = engine.submit(_ids(engine, PROMPTS[0]), 8).future.result(timeout=60)
    assert new.model_version == version and engine.counters["swaps"] == 1
    assert engine.counters["failed_batches"] == 0


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(engine, sqlite_db, add_version):
    broken = add_version(sqlite_db, broken=True)
    with sqlite_db.session() as session:
        activate(session, broken)
    engine.refresh_version()
    _wait_for(lambda: engine.load_error is not None)
    assert broken in engine.load_error and engine.version_id is None
    result = engine.submit(_ids(engine, "still there?"), 4).future.result(timeout=60)
    assert result.model_version is None
    assert engine.stats()["load_error"] == engine.load_error
