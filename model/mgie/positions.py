"""Which hidden states feed the edit head: the positions *predicting* [IMG0]..[IMG7].

Training (apple/ml-mgie ``mgie_llava.py``): ``p = labels.index([IMG0]) - 1`` (fallback ``len - 9``), clamped to
``len(hidden) - 9``, and the head reads ``hidden[p:p+8]``. Inference (``demo.ipynb``): the hidden states of a greedy
``generate`` (prompt pass + one per generated token, so one fewer than the sequence's tokens) with the same rule
on the generated ids. When the model does not emit [IMG0], the last 8 positions before the final one are used.
The clamp is kept as in the demo, including its one-position shift when generation stops right after [IMG7].
"""

from __future__ import annotations

from collections.abc import Sequence


def img_hidden_start(token_ids: Sequence[int], first_img_id: int, num_hidden: int, num_img_tokens: int = 8) -> int:
    """Start p of the ``num_img_tokens`` hidden positions for one sequence.

    token_ids: the full sequence (prompt + generated); num_hidden: how many hidden states there are
    (``len(token_ids) - 1`` for generate's, ``len(token_ids)`` for a teacher-forced pass)."""
    ids = list(token_ids)
    last_start = num_hidden - (num_img_tokens + 1)
    if last_start < 0:
        raise ValueError(f"a sequence of {num_hidden} hidden states is too short for {num_img_tokens} [IMG] positions")
    p = ids.index(first_img_id) - 1 if first_img_id in ids else last_start
    return max(0, min(p, last_start))


def img_hidden_positions(token_ids: Sequence[int], first_img_id: int, num_hidden: int,
                         num_img_tokens: int = 8) -> list[int]:
    """The ``num_img_tokens`` consecutive positions the edit head reads (see module docstring)."""
    p = img_hidden_start(token_ids, first_img_id, num_hidden, num_img_tokens)
    return list(range(p, p + num_img_tokens))
