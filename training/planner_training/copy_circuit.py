"""
A copy circuit set into a random-weight Qwen2 before training: the demo model's head start.

A plan repeats the command's names ("把窗台上的雨伞..." -> "在窗台上寻找雨伞；..."), and the
held-out test split asks for names the training data never shows, so the model must copy.
Transformers copy with an induction circuit (Olsson et al., 2022, "In-context Learning and
Induction Heads"): a head in one layer attends to the previous token and writes it into the
residual stream; a head in a later layer attends from the current token to the position whose
*previous* token is the current one, and copies the token found there. Trained from random
weights on the project's data, a 2-layer model grows that circuit only after 16,000-24,000
rows (benchmarks/RESULTS.md, learning curves), most of the demo's CPU budget.
:func:`plant_copy_circuit` sets two heads' weights so that the circuit works at step 0; every
weight, those included, is then trained as usual.

The residual stream (hidden size ``d``, head size ``h``) is laid out as:

- dimensions ``[0, d/2)``: the token. The embeddings are random there and zero elsewhere (the
  embeddings are tied, so the output reads these dimensions too);
- dimensions ``[d/2, d/2 + h)``: the previous token, written by layer 0's head 0.

Layer 0, head 0 (previous-token head): query and key are constants (their biases), set in the
fast-rotating RoPE pairs so that the score is highest one position back; the value reads the
token, the output writes it into the previous-token dimensions.

Layer 1, head 0 (induction head): the query reads the token through the same projection, the
key reads the previous-token dimensions, both only in the RoPE pairs that turn by less than
half a radian over the context (with ``rope_theta`` 1e6, Qwen1.5's value, 8 of 16 pairs), so
that matching does not depend on distance; the value and output copy the attended token back
into the token dimensions, where the tied embeddings make it the top logit.
"""

import math
from typing import List, Tuple


class CopyCircuitError(ValueError):
    """The model cannot hold the circuit (too few layers, too small, no slow RoPE pairs)."""


def _rope_theta(config) -> float:
    parameters = getattr(config, 'rope_parameters', None) or {}
    return float(parameters.get('rope_theta', getattr(config, 'rope_theta', 10000.0)))


def _orthonormal_rows(rows: int, columns: int, generator):
    import torch
    q, _ = torch.linalg.qr(torch.randn(columns, rows, generator=generator))
    return q.T


def rope_frequencies(config) -> List[float]:
    """Return the angle (radians per position) of each RoPE pair of one head."""
    half = config.hidden_size // config.num_attention_heads // 2
    return [_rope_theta(config) ** (-i / half) for i in range(half)]


def rope_pairs(config, context: int) -> Tuple[List[int], List[int]]:
    """
    Return (slow, fast) RoPE pair indexes of one head.

    Slow pairs turn by less than half a radian over ``context`` positions; fast pairs by more
    than 0.05 radian per position.
    """
    frequencies = rope_frequencies(config)
    slow = [i for i, f in enumerate(frequencies) if f * context < 0.5]
    fast = [i for i, f in enumerate(frequencies) if f > 0.05]
    return slow, fast


def plant_copy_circuit(model, embedding_std: float = 0.2, key_scale: float = 3.0,
                       copy_scale: float = 5.0, previous_scale: float = 9.0,
                       context: int = 256, seed: int = 0) -> None:
    """
    Set the copy circuit into ``model`` (a Qwen2ForCausalLM, random weights) in place.

    ``embedding_std``: the embeddings' scale (the copied token's logit grows with it);
    ``key_scale``: the induction head's query/key scale (how sharply it matches);
    ``copy_scale``: how strongly it writes the copied token; ``previous_scale``: the
    previous-token head's bias size (how sharply it looks one back). Raise
    :class:`CopyCircuitError` when the model cannot hold it.
    """
    import torch
    config = model.config
    d = config.hidden_size
    head_dim = d // config.num_attention_heads
    half = head_dim // 2
    content = d // 2
    slow, fast = rope_pairs(config, context)
    if config.num_hidden_layers < 2:
        raise CopyCircuitError('the copy circuit needs 2 layers, the model has %d'
                               % config.num_hidden_layers)
    if content + head_dim > d:
        raise CopyCircuitError('hidden size %d cannot hold the token (%d) and the previous '
                               'token (%d)' % (d, content, head_dim))
    if not slow or not fast:
        raise CopyCircuitError(
            'rope_theta %g leaves no RoPE pair that turns slowly over %d positions; use 1e6'
            % (_rope_theta(config), context))
    generator = torch.Generator().manual_seed(seed)
    token = slice(0, content)
    head = slice(0, head_dim)  # head 0 (and key/value head 0)
    layer0 = model.model.layers[0].self_attn
    layer1 = model.model.layers[1].self_attn
    with torch.no_grad():
        embeddings = model.get_input_embeddings().weight
        embeddings.normal_(0.0, embedding_std, generator=generator)
        embeddings[:, content:] = 0.0

        # Layer 0, head 0: look one position back, write that token to [content, +head_dim).
        frequencies = rope_frequencies(config)
        query_bias = torch.zeros(head_dim)
        key_bias = torch.zeros(head_dim)
        for i in fast:  # key pair = query pair turned by one position: the score peaks there
            query_bias[i] = previous_scale
            key_bias[i] = previous_scale * math.cos(frequencies[i])
            key_bias[i + half] = previous_scale * math.sin(frequencies[i])
        projection = _orthonormal_rows(head_dim, content, generator)
        for linear in (layer0.q_proj, layer0.k_proj, layer0.v_proj):
            linear.weight[head] = 0.0
            linear.bias[head] = 0.0
        layer0.q_proj.bias[head] = query_bias
        layer0.k_proj.bias[head] = key_bias
        layer0.v_proj.weight[head, token] = projection
        layer0.o_proj.weight[:, head] = 0.0
        layer0.o_proj.weight[content:content + head_dim, head] = torch.eye(head_dim)

        # Layer 1, head 0: match the token with the previous token, copy what follows it.
        for linear in (layer1.q_proj, layer1.k_proj, layer1.v_proj):
            linear.weight[head] = 0.0
            linear.bias[head] = 0.0
        for row, dim in enumerate(slow + [i + half for i in slow]):
            layer1.q_proj.weight[dim, token] = key_scale * projection[row]
            layer1.k_proj.weight[dim, content + row] = key_scale
        copy = _orthonormal_rows(head_dim, content, generator)
        layer1.v_proj.weight[head, token] = copy
        layer1.o_proj.weight[:, head] = 0.0
        layer1.o_proj.weight[token, head] = copy_scale * copy.T


def copy_accuracy(model, length: int = 20, batch: int = 16, seed: int = 0) -> float:
    """
    Return how often ``model`` predicts the next token of a repeated random sequence.

    Each row is 30 random tokens, then ``length`` random tokens twice; measured on the second
    copy (after its first token): a model that copies gets ~1, one that does not ~1/vocabulary.
    """
    import torch
    generator = torch.Generator().manual_seed(seed)
    vocabulary = model.config.vocab_size
    low = min(300, vocabulary // 2)  # skip the byte tokens and specials at the start
    prefix = torch.randint(low, vocabulary, (batch, 30), generator=generator)
    sequence = torch.randint(low, vocabulary, (batch, length), generator=generator)
    ids = torch.cat([prefix, sequence, sequence], dim=1)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    model.train(was_training)
    start = 30 + length
    predicted = logits[:, start:-1].argmax(-1)
    return float((predicted == ids[:, start + 1:]).float().mean())
