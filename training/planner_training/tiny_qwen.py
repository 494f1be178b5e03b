"""
Tiny Qwen2-architecture models and tokenizers, built locally (nothing downloads).

Tests and ``make demo`` use them in place of Qwen1.5-7B: they are written with
``save_pretrained`` and loaded through the same ``from_pretrained`` code path as the real
model. The tokenizer is a byte-level BPE (Qwen2's pre-tokenizer and decoder) trained with
``tokenizers`` on the project's own texts, with Qwen's special tokens.
"""

import os
from typing import Callable, Iterable, Optional

from robot_llm_planner.core.prompt import ENDOFTEXT, IM_END, IM_START

SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)


def build_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 600,
                    split_han: bool = False):
    """
    Train a byte-level BPE on ``texts`` and save it as a Qwen2 tokenizer in ``out_dir``.

    With ``split_han`` the BPE is trained on Chinese (Han) characters one by one, so no merge
    joins two of them: every Han character of ``texts`` becomes exactly one token (given a
    ``vocab_size`` large enough), in commands and plans alike, while English words still
    merge. The saved tokenizer is a plain Qwen2 tokenizer (Qwen2's pre-tokenizer): its merges
    alone keep Han characters apart.
    """
    from tokenizers import models, normalizers, pre_tokenizers, Regex, Tokenizer, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    splits = [pre_tokenizers.Split(Regex(r'\p{Han}'), behavior='isolated', invert=False)] \
        if split_han else []
    bpe.pre_tokenizer = pre_tokenizers.Sequence(splits + [
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(list(texts), trainer)
    state = bpe.model
    vocab = bpe.get_vocab()
    merges_path = os.path.join(out_dir, '.bpe')
    os.makedirs(merges_path, exist_ok=True)
    vocab_file, merges_file = state.save(merges_path)
    with open(merges_file, encoding='utf-8') as stream:
        merges = [line.rstrip('\n') for line in stream if line.strip() and
                  not line.startswith('#version')]
    for path in (vocab_file, merges_file):
        os.remove(path)
    os.rmdir(merges_path)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m.split(' ')) for m in merges],
                               eos_token=ENDOFTEXT, pad_token=ENDOFTEXT, unk_token=None,
                               additional_special_tokens=[IM_START, IM_END])
    tokenizer.model_max_length = 2048
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_model(tokenizer_dir: str, out_dir: str, hidden_size: int = 64, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate_size: Optional[int] = None,
                max_positions: int = 1024, seed: int = 0, rope_theta: float = 10000.0,
                initialize: Optional[Callable] = None, vocab_size: Optional[int] = None):
    """
    Create a random-weight Qwen2 model sized for the tokenizer and save it in ``out_dir``.

    ``vocab_size`` (the embedding's rows, the logits' width) defaults to the tokenizer's
    length; Qwen1.5 pads its 151,646 tokens to 151,936 rows.

    ``initialize(model)``, when given, changes the random weights in place before saving
    (e.g. :func:`planner_training.copy_circuit.plant_copy_circuit`).
    """
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer), hidden_size=hidden_size, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        intermediate_size=intermediate_size or 2 * hidden_size,
        max_position_embeddings=max_positions, rope_theta=rope_theta, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    if initialize is not None:
        initialize(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return model
