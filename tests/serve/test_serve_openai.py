"""The OpenAI-compatible routes, driven by the official `openai` client against a real
uvicorn server: every answer is stored, committed, and its id handed back."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from selftrain.store.db import Database
from selftrain.store.schema import Interaction


@pytest.fixture
def client(server, keys):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=keys.alice, max_retries=0, timeout=60)


def _row(settings, interaction_id) -> Interaction:
    """Read through a fresh connection: what a second process would see (i.e. committed)."""
    fresh = Database(settings.resolved_database_url, upgrade=False)
    try:
        with fresh.session() as session:
            return session.get(Interaction, interaction_id)
    finally:
        fresh.close()


def test_chat_completion_is_stored_and_its_id_returned(client, settings):
    raw = client.chat.completions.with_raw_response.create(
        model="anything", max_tokens=8, messages=[{"role": "user", "content": "Write `is_even(n)`."}])
    completion = raw.parse()
    interaction_id = int(raw.headers["X-Selftrain-Interaction"])
    assert completion.id == f"chatcmpl-{interaction_id}"
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.completion_tokens <= 8
    assert completion.system_fingerprint == "base"
    row = _row(settings, interaction_id)
    assert (row.user, row.source, row.prompt) == ("alice", "api", "Write `is_even(n)`.")
    assert row.raw_response == completion.choices[0].message.content
    assert row.model_version is None and row.completion_tokens == completion.usage.completion_tokens


def test_chat_streaming_sends_the_stored_answer(client, settings):
    with client.chat.completions.with_streaming_response.create(
            model="selftrain", max_tokens=12, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Reverse a string."}]}]) as raw:
        interaction_id = int(raw.headers["X-Selftrain-Interaction"])
        chunks = list(raw.parse())
    assert {c.id for c in chunks} == {f"chatcmpl-{interaction_id}"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 12
    row = _row(settings, interaction_id)
    assert row.raw_response == text and row.completion_tokens == chunks[-1].usage.completion_tokens
    assert "System: Be brief." in row.prompt and "User: Reverse a string." in row.prompt


def test_completions_single_list_and_stream(client, settings):
    single = client.completions.create(model="m", prompt="def add(a, b):", max_tokens=6, echo=True)
    assert single.choices[0].text.startswith("def add(a, b):")
    several = client.completions.with_raw_response.create(model="m", prompt=["def f():", "x = "], max_tokens=4)
    ids = [int(i) for i in several.headers["X-Selftrain-Interaction"].split(",")]
    parsed = several.parse()
    assert len(ids) == 2 and parsed.id == f"cmpl-{ids[0]}"
    assert [c.index for c in parsed.choices] == [0, 1]
    assert [_row(settings, i).prompt for i in ids] == ["def f():", "x = "]
    streamed = list(client.completions.create(model="m", prompt="for item in", max_tokens=5, stream=True))
    assert streamed and all(c.object == "text_completion" for c in streamed)


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == ["selftrain"]


def test_errors_reach_the_client_as_openai_errors(server, client, keys):
    anonymous = openai.OpenAI(base_url=server.url + "/v1", api_key="st-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    assert httpx.get(server.url + "/v1/models").status_code == 401  # no header at all
    with pytest.raises(openai.UnprocessableEntityError) as bad:
        client.chat.completions.create(model="m", messages=[])
    assert "messages" in bad.value.message
    with pytest.raises(openai.UnprocessableEntityError) as long:
        client.chat.completions.create(model="m", max_tokens=10_000, messages=[{"role": "user", "content": "hi"}])
    assert long.value.body["param"] == "max_tokens"
    with pytest.raises(openai.UnprocessableEntityError) as huge:
        client.completions.create(model="m", prompt="word " * 2000, max_tokens=1)
    assert huge.value.body["code"] == "context_length_exceeded"
    forbidden = httpx.get(server.url + "/api/admin/versions", headers={"Authorization": f"Bearer {keys.alice}"})
    assert forbidden.status_code == 403 and "admin" in forbidden.json()["error"]["message"]


def test_full_queue_answers_429(server, engine, keys, block_worker):
    release, entered = block_worker(engine)
    engine._queue.maxsize = 1
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=keys.alice, max_retries=0, timeout=60)
    results = []

    def ask():
        results.append(client.completions.create(model="m", prompt="x", max_tokens=2))

    first = threading.Thread(target=ask)
    first.start()
    assert entered.wait(30)  # the worker holds request 1 in a batch
    second = threading.Thread(target=ask)
    second.start()
    for _ in range(500):  # request 2 waits in the (full) queue
        if engine.queue_depth == 1:
            break
        threading.Event().wait(0.01)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model="m", prompt="y", max_tokens=2)
    release.set()
    first.join(60)
    second.join(60)
    assert len(results) == 2 and engine.counters["rejected"] == 1
