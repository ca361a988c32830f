"""The generation engine: one model in memory, concurrent requests batched dynamically.

Requests wait in a bounded queue (full: `EngineBusy`, which the API answers with 429).
One worker thread takes the first waiting request, collects more for `batch_wait_ms`
or until `batch_size`, and decodes them together. Batching is where the speed is: a
decoding step reads every weight once whatever the batch size, so on a memory-bound
CPU eight rows cost little more than one.

The decoding loop is our own rather than `model.generate`: it needs per-row token
limits and stop strings, streams each row's text as it grows, drops rows from the batch
(and from the KV cache) as soon as they finish, and hands each result back the moment
its row is done instead of when the slowest row is. Greedy decoding (argmax), as
everywhere else in selftrain.

Hot swap: before each batch the worker reads the active version id; when it changed, a
loader thread builds the new model while batches keep running on the old one, then
swaps one reference. A batch holds its own reference to the model it started with, so
a request in flight always finishes on the version it began with, and its interaction
records that version.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Callable

from selftrain.agent import LoadedModel, active_version_ref, load_version
from selftrain.config import Settings
from selftrain.models.prompting import render_prompt
from selftrain.store.db import Database

log = logging.getLogger("selftrain.serve")


class EngineBusy(Exception):
    """The queue is full: the client should retry later (HTTP 429)."""


class EngineStopped(Exception):
    """The engine is shutting down (HTTP 503)."""


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" (end of answer or a stop string) | "length" (max_tokens)
    prompt_tokens: int
    completion_tokens: int
    model_version: str | None  # the version that generated it; None = the base model
    queued_ms: float  # from submission to the start of its batch
    latency_ms: float  # from submission to its last token
    batch_size: int  # rows in the batch it was generated in


class Ticket:
    """One request inside the engine. Its `Completion` arrives in `future`; `on_text`
    (called from the worker thread) receives the answer's text piece by piece."""

    def __init__(self, prompt_ids: list[int], max_tokens: int, stop: tuple[str, ...] = (),
                 on_text: Callable[[str], None] | None = None):
        self.prompt_ids, self.max_tokens, self.stop, self.on_text = prompt_ids, max_tokens, stop, on_text
        self.future: Future[Completion] = Future()
        self.submitted = time.perf_counter()
        self._cancelled = False

    def cancel(self) -> None:
        """Stop generating for this request (its client went away)."""
        self._cancelled = True
        self.future.cancel()

    @property
    def cancelled(self) -> bool:
        return self._cancelled or self.future.cancelled()


class _Row:
    """Decoding state of one ticket within a batch."""

    def __init__(self, ticket: Ticket, tokenizer, eos_ids: set[int]):
        self.ticket, self.tokenizer, self.eos_ids = ticket, tokenizer, eos_ids
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of `text` already passed to on_text
        self.finish_reason = "length"
        # Text is needed every step only to stream it or to look for stop strings.
        self.track_text = bool(ticket.on_text or ticket.stop)

    def feed(self, token: int) -> bool:
        """Take the next token; True when the row is finished."""
        if self.ticket.cancelled:
            self.finish_reason = "cancelled"
            return True
        if token in self.eos_ids:
            self.finish_reason = "stop"
            return True
        self.ids.append(token)
        done = len(self.ids) >= self.ticket.max_tokens
        if self.track_text or done:
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            if self._cut_at_stop():
                self.finish_reason = "stop"
                return True
        if self.ticket.on_text and not done:
            self._emit(final=False)
        return done

    def _cut_at_stop(self) -> bool:
        hits = [i for i in (self.text.find(s) for s in self.ticket.stop if s) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
        return bool(hits)

    def _emit(self, final: bool) -> None:
        end = len(self.text)
        if not final:
            # Hold back a trailing partial UTF-8 character and anything that could be the
            # start of a stop string: neither may reach the client yet.
            if self.text.endswith("\ufffd"):
                end = len(self.text.rstrip("\ufffd"))
            for s in self.ticket.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if self.text[:end].endswith(s[:k]):
                        end -= k
                        break
        if end > self.sent:
            self.ticket.on_text(self.text[self.sent:end])
            self.sent = end

    def finish(self, version_id: str | None, batch_size: int, started: float) -> None:
        if not self.track_text and self.finish_reason != "length":
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.finish_reason == "cancelled":
            return
        if self.ticket.on_text:
            self._emit(final=True)
        now = time.perf_counter()
        completion = Completion(text=self.text, finish_reason=self.finish_reason,
                                prompt_tokens=len(self.ticket.prompt_ids), completion_tokens=len(self.ids),
                                model_version=version_id, queued_ms=(started - self.ticket.submitted) * 1000,
                                latency_ms=(now - self.ticket.submitted) * 1000, batch_size=batch_size)
        try:
            self.ticket.future.set_result(completion)
        except InvalidStateError:  # cancelled by its client meanwhile
            pass


class GenerationEngine:
    """The model in service and the worker thread that batches requests for it."""

    def __init__(self, settings: Settings, db: Database):
        self.settings, self.db = settings, db
        # Settings the lead adds to config.py; getattr keeps this working meanwhile.
        self.batch_size = int(getattr(settings, "serve_batch_size", settings.generation_batch_size))
        self.batch_wait_s = float(getattr(settings, "serve_batch_wait_ms", 5.0)) / 1000
        self.queue_size = int(getattr(settings, "serve_queue_size", 64))
        self.max_prompt_tokens = int(getattr(settings, "serve_max_prompt_tokens", 2048))
        self.max_tokens_limit = int(getattr(settings, "serve_max_tokens", 1024))
        self.default_max_tokens = min(settings.max_new_tokens, self.max_tokens_limit)
        self.torch_threads = int(getattr(settings, "serve_torch_threads", 1))
        self._queue: queue.Queue[Ticket] = queue.Queue(maxsize=self.queue_size)
        self._slot: LoadedModel | None = None
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._loader: threading.Thread | None = None
        self._failed_version: tuple[str | None, str | None] | None = None
        self.load_error: str | None = None
        self.counters = {"batches": 0, "batch_rows": 0, "generated_tokens": 0, "prompt_tokens": 0,
                         "rejected": 0, "swaps": 0, "failed_batches": 0}

    # --- lifecycle ---
    def start(self) -> GenerationEngine:
        """Load the active version (blocking) and start the worker."""
        if self._slot is None:
            self._slot = load_version(self.settings, *active_version_ref(self.db))
            freeze_heap()
        if self._worker is None:
            self._stopping.clear()
            self._worker = threading.Thread(target=self._run, name="selftrain-generation", daemon=True)
            self._worker.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout=30)
            self._worker = None
        while True:  # whatever still waits will not be served
            try:
                ticket = self._queue.get_nowait()
            except queue.Empty:
                break
            _fail(ticket, EngineStopped("The server is shutting down."))

    # --- what the API needs ---
    @property
    def loaded(self) -> LoadedModel:
        if self._slot is None:
            raise EngineStopped("The model is not loaded yet.")
        return self._slot

    @property
    def version_id(self) -> str | None:
        return self.loaded.version_id

    @property
    def context_length(self) -> int:
        return int(getattr(self.loaded.model.config, "max_position_embeddings", 2048))

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def render_chat(self, messages: list[dict]) -> str:
        """The text the model continues to answer a conversation."""
        tokenizer = self.loaded.tokenizer
        if self.settings.prompt_format == "chat" and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return render_prompt(tokenizer, flatten_messages(messages), "instruction")

    def render_instruction(self, instruction: str) -> str:
        return render_prompt(self.loaded.tokenizer, instruction, self.settings.prompt_format)

    def encode(self, text: str) -> list[int]:
        # Plain encode, never padding or truncation: the tokenizer's padding state is
        # shared, and the worker pads by hand, so concurrent calls cannot disturb it.
        return self.loaded.tokenizer.encode(text, add_special_tokens=False)

    def submit(self, prompt_ids: list[int], max_tokens: int, stop: tuple[str, ...] = (),
               on_text: Callable[[str], None] | None = None) -> Ticket:
        """Queue a request; raises EngineBusy when the queue is full."""
        if self._stopping.is_set() or self._worker is None:
            raise EngineStopped("The generation engine is not running.")
        ticket = Ticket(prompt_ids, max_tokens, tuple(s for s in stop if s), on_text)
        try:
            self._queue.put_nowait(ticket)
        except queue.Full:
            self.counters["rejected"] += 1
            raise EngineBusy(f"The generation queue is full ({self.queue_size} requests waiting); "
                             "retry shortly.") from None
        return ticket

    def refresh_version(self) -> None:
        """Look at the active version now (after an activation through the API)."""
        self._check_version()

    # --- the worker ---
    def _run(self) -> None:
        previous = None
        if self.torch_threads > 0:
            # On a busy machine two intra-op threads wait on each other at every barrier;
            # one thread can be much faster there (measured: 40 ms vs 0.4-3 s a batch).
            # The setting is process-wide: restored when the worker ends.
            import torch

            previous = torch.get_num_threads()
            torch.set_num_threads(self.torch_threads)
        try:
            self._serve_batches()
        finally:
            if previous is not None:
                import torch

                torch.set_num_threads(previous)

    def _serve_batches(self) -> None:
        idle_checked = time.monotonic()
        while not self._stopping.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                if time.monotonic() - idle_checked > 2.0:  # swap while idle, not on the next request
                    self._check_version()
                    idle_checked = time.monotonic()
                continue
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.batch_size:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0
                                 else self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [t for t in batch if not t.cancelled]
            if not batch:
                continue
            self._check_version()
            slot = self._slot  # this batch runs start to end on this model, whatever swaps meanwhile
            try:
                self._run_batch(slot, batch)
            except Exception as exc:  # a bug or out of memory: fail this batch, keep serving
                log.exception("generation batch failed")
                self.counters["failed_batches"] += 1
                for ticket in batch:
                    _fail(ticket, exc)

    def _check_version(self) -> None:
        try:
            wanted = active_version_ref(self.db)
        except Exception:  # the database hiccuped: keep serving what is loaded
            log.exception("could not read the active version")
            return
        slot = self._slot
        if slot is None or wanted[0] == slot.version_id or wanted == self._failed_version:
            return
        if self._loader is not None and self._loader.is_alive():
            return
        self._loader = threading.Thread(target=self._load, args=wanted, name="selftrain-swap", daemon=True)
        self._loader.start()

    def _load(self, version_id: str | None, adapter: str | None) -> None:
        try:
            loaded = load_version(self.settings, version_id, adapter)
        except Exception as exc:
            # Keep serving the version that is loaded; do not retry this one until it changes.
            self._failed_version = (version_id, adapter)
            self.load_error = f"Could not load version {version_id or 'base'}: {exc}"
            log.error(self.load_error)
            return
        self._slot = loaded  # one reference assignment: atomic under the GIL
        del loaded
        freeze_heap()  # the old model's cycles are collected once, here, not in a request
        self._failed_version, self.load_error = None, None
        self.counters["swaps"] += 1
        log.info("now serving version %s", version_id or "base")

    def _run_batch(self, slot: LoadedModel, tickets: list[Ticket]) -> None:
        import torch
        from transformers import DynamicCache

        model, tokenizer = slot.model, slot.tokenizer
        started = time.perf_counter()
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
        rows = [_Row(t, tokenizer, eos_ids) for t in tickets]
        n = len(rows)
        self.counters["batches"] += 1
        self.counters["batch_rows"] += n
        self.counters["prompt_tokens"] += sum(len(t.prompt_ids) for t in tickets)

        # Left padding, so every row's next token comes from its last real position; the
        # mask hides the padding and positions count real tokens only.
        width = max(len(t.prompt_ids) for t in tickets)
        input_ids = torch.tensor([[pad] * (width - len(t.prompt_ids)) + t.prompt_ids for t in tickets])
        mask = torch.tensor([[0] * (width - len(t.prompt_ids)) + [1] * len(t.prompt_ids) for t in tickets])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        cache_kw = _cache_keyword(model)
        live = list(range(n))  # which row each tensor row belongs to
        with torch.inference_mode():
            out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                        use_cache=True, logits_to_keep=1, **{cache_kw: cache})
            while True:
                next_ids = out.logits[:, -1].argmax(-1)
                keep = []
                for j, token in enumerate(next_ids.tolist()):
                    row = rows[live[j]]
                    if row.feed(token):
                        self.counters["generated_tokens"] += len(row.ids)
                        row.finish(slot.version_id, n, started)
                    else:
                        keep.append(j)
                if not keep:
                    break
                if len(keep) < len(live):  # finished rows leave the batch and the cache
                    index = torch.tensor(keep)
                    cache.batch_select_indices(index)
                    mask, positions, next_ids = mask[index], positions[index], next_ids[index]
                    live = [live[j] for j in keep]
                mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
                positions = positions[:, -1:] + 1
                out = model(input_ids=next_ids[:, None], attention_mask=mask, position_ids=positions,
                            use_cache=True, logits_to_keep=1, **{cache_kw: cache})

    def stats(self) -> dict:
        return {**self.counters, "queue_depth": self.queue_depth, "queue_size": self.queue_size,
                "batch_size": self.batch_size,
                "version": (self._slot.version_id or "base") if self._slot else None,
                "load_error": self.load_error}


def freeze_heap() -> None:
    """Keep the loaded model out of Python's cyclic garbage collector.

    A loaded model and tokenizer are ~450k Python objects; a full collection walks all of
    them (~240 ms measured here), and the allocation churn of serving triggers one every so
    often, stalling every request in flight (bench/api_feedback.py saw p99 jump to 300 ms).
    Collect once now, then move every live object to the permanent generation (gc.freeze,
    as CPython's docs suggest for pre-forked servers), so later collections walk only
    what requests create. Called again after a swap: unfreeze first, so the replaced
    model's cycles are collected."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _fail(ticket: Ticket, exc: BaseException) -> None:
    try:
        ticket.future.set_exception(exc)
    except InvalidStateError:
        pass


def _cache_keyword(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; accept either."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def flatten_messages(messages: list[dict]) -> str:
    """A conversation as one instruction: the user's text alone when it is a single
    request (the common case), else a transcript, so a follow-up keeps its context."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1 and turns[0]["role"] == "user" and len(messages) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
