"""
Plan confidence: how sure the model was of an answer, of each step, and how it is published.

An answer's ``confidence`` is the lowest probability the model gave any token of it (the local
backend reads it from the logits before the grammar's mask; a remote one from the server's
log-probabilities). Each step's confidence is the same over the tokens of that step alone:
:func:`character_spans` tells which characters of the text each token's bytes fall in (a
character split over byte-level tokens is in each of them), :func:`assign_step_confidences`
maps tokens to the steps of :func:`~robot_llm_planner.core.plan.step_spans`.
:func:`published_confidence` is the value /action_plan carries and the one
``validation.min_confidence`` is compared with.
"""

import codecs
import math
from typing import List, Optional, Sequence, Tuple

from robot_llm_planner.core.plan import Plan, step_spans


def published_confidence(value: Optional[float]) -> Optional[float]:
    """
    Return a confidence as it is published and checked: in [0, 1], 4 decimals, rounded down.

    Rounding down keeps a plan held back by ``validation.min_confidence`` below the threshold
    in the message too; anything not a number (NaN from a broken model) is 0.
    """
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        return 0.0
    # the 1e-6 keeps an exact decimal (0.9 computed as 0.8999999999999999) from losing a digit
    return math.floor(min(1.0, max(0.0, value)) * 1e4 + 1e-6) / 1e4


def character_spans(pieces: Sequence[bytes]) -> Tuple[List[Tuple[int, int]], str]:
    """
    Return the characters each token's bytes fall in, as (start, end) offsets, and the text.

    The text is decoded as Python and tokenizers do (an invalid byte becomes U+FFFD). A
    character split over several tokens is in each of them: it counts as begun in the token
    with its first byte and is the first character of every token with more of its bytes. A
    token without bytes (a special token) holds no character: ``start == end``.
    """
    decoder = codecs.getincrementaldecoder('utf-8')('replace')
    text, spans = '', []
    for piece in pieces:
        start = len(text)  # the character this token's first byte begins or continues
        text += decoder.decode(piece)
        pending = decoder.getstate()[0]
        end = len(text) + len(pending.decode('utf-8', 'replace'))
        spans.append((start if piece else end, end))
    text += decoder.decode(b'', final=True)
    return spans, text


def assign_step_confidences(plan: Plan,
                            token_probabilities: Optional[Sequence[Tuple[int, int, float]]]
                            ) -> None:
    """
    Set each step's ``confidence`` from the answer's tokens.

    ``token_probabilities`` lists, for each generated token in order, the characters of
    ``plan.raw_output`` its bytes fall in (start and end offsets, :func:`character_spans`)
    and its probability. A step's confidence is the lowest probability of the tokens that
    overlap its description or its output2 entry; separators between steps and the stop token
    belong to no step. Nothing is set when the tokens are unknown.
    """
    if not token_probabilities:
        return
    spans = step_spans(plan.raw_output)
    if len(spans) != len(plan.steps):
        return
    for step, step_span in zip(plan.steps, spans):
        lowest = None
        for start, end, probability in token_probabilities:
            if any(start < b and end > a for a, b in step_span):
                lowest = probability if lowest is None else min(lowest, probability)
        step.confidence = lowest
