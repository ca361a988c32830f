"""Batched greedy generation with stop rules, returning code and explanation apart."""

from __future__ import annotations

import time
from dataclasses import dataclass

from selftrain.models.prompting import split_answer


@dataclass(frozen=True)
class Generation:
    text: str
    code: str
    explanation: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float  # wall time of the batch this answer was generated in


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 256,
             batch_size: int = 8, stop: tuple[str, ...] = (), code_only: bool = False) -> list[Generation]:
    """Answer each rendered prompt greedily; results come back in input order.

    Prompts are batched by similar length (left-padded, so every row continues from its
    last real token) to waste little compute on padding. `code_only` ends a row as soon as
    it has written the code block `split_answer` picks (evaluation needs no explanation):
    the extracted code is the same, and most of the tokens are saved.
    """
    import torch

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                        add_special_tokens=False)
        began = time.perf_counter()
        extra = {"stopping_criteria": [CodeBlockWritten(tokenizer, enc["input_ids"].shape[1])]} if code_only else {}
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **extra)
        latency_ms = (time.perf_counter() - began) * 1000
        new_tokens = out[:, enc["input_ids"].shape[1]:]
        for row, i in enumerate(batch):
            ids = new_tokens[row].tolist()
            if tokenizer.eos_token_id in ids:
                ids = ids[:ids.index(tokenizer.eos_token_id)]
            text = tokenizer.decode(ids, skip_special_tokens=True)
            for marker in stop:
                text = text.split(marker, 1)[0]
            code, explanation = split_answer(text)
            results[i] = Generation(text=text, code=code, explanation=explanation,
                                    prompt_tokens=int(enc["attention_mask"][row].sum()),
                                    completion_tokens=len(ids), latency_ms=latency_ms)
    return results  # type: ignore[return-value]


class CodeBlockWritten:
    """A per-row stopping rule for `model.generate`: a row is done once its new text holds
    a closed code block that defines something (prompting.has_closed_code_block). Only rows
    whose last token contains a backtick are decoded, so the check costs little."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length
        self.backtick_tokens: dict[int, bool] = {}

    def _has_backtick(self, token: int) -> bool:
        if token not in self.backtick_tokens:
            self.backtick_tokens[token] = "`" in self.tokenizer.decode([token])
        return self.backtick_tokens[token]

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        from selftrain.models.prompting import has_closed_code_block

        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in range(input_ids.shape[0]):
            if self._has_backtick(int(input_ids[row, -1])):
                text = self.tokenizer.decode(input_ids[row, self.prompt_length:], skip_special_tokens=True)
                done[row] = has_closed_code_block(text)
        return done
