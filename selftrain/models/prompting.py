"""How a request and its answer are laid out as text, in training and in generation.

Both sides must use the same layout, or the model learns one format and is asked in
another. Two layouts: the model's own chat template, and the spec's instruction layout.
"""

from __future__ import annotations

import ast
import re

INSTRUCTION_PROMPT = "### Instruction:\n{instruction}\n\n### Code:\n"
INSTRUCTION_EXPLANATION = "\n\n### Explanation:\n"

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def render_prompt(tokenizer, instruction: str, prompt_format: str) -> str:
    """The text the model continues to answer `instruction`."""
    if prompt_format == "chat" and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": instruction}],
                                             add_generation_prompt=True, tokenize=False)
    return INSTRUCTION_PROMPT.format(instruction=instruction.strip())


def render_answer(code: str, explanation: str, prompt_format: str, tokenizer=None) -> str:
    """The text the model should produce after the prompt (the training target)."""
    code = code.strip("\n")
    explanation = (explanation or "").strip()
    if prompt_format == "chat" and getattr(tokenizer, "chat_template", None) is not None:
        answer = f"```python\n{code}\n```"
        return f"{answer}\n\n{explanation}" if explanation else answer
    return code + (INSTRUCTION_EXPLANATION + explanation if explanation else "")


def split_answer(text: str) -> tuple[str, str]:
    """Split generated text into (code, explanation).

    Prefers the first fenced block that defines something (a fence cut off by the token
    limit still counts); without fences, the text before an `### Explanation:` header.
    """
    blocks = [(m.group(2), m.span()) for m in _FENCE.finditer(text)
              if m.group(1).lower() in ("", "python", "py", "python3")]
    if blocks:
        code, (start, end) = next(((c, s) for c, s in blocks if re.search(r"^\s*(def|class|import|from)\b", c, re.M)),
                                  blocks[0])
        explanation = (text[:start] + text[end:]).strip()
        return code.strip("\n"), explanation
    head, _, tail = text.partition(INSTRUCTION_EXPLANATION.strip("\n"))
    return head.strip("\n"), tail.strip()


_CLOSED_FENCE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def has_closed_code_block(text: str) -> bool:
    """Whether `text` holds a closed fenced block that split_answer would pick as the code:
    generation may stop there without changing the code it extracts."""
    return any(m.group(1).lower() in ("", "python", "py", "python3")
               and re.search(r"^\s*(def|class|import|from)\b", m.group(2), re.M)
               for m in _CLOSED_FENCE.finditer(text))


def is_valid_python(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: source contains null bytes
        return False
    return bool(code.strip())
