"""
Qwen1.5's tokenizer built by `cli qwen-tokenizer` encodes exactly as Qwen's tiktoken encoding.

The reference is tiktoken itself, given the ranks read by tiktoken's own loader and the
pre-tokenizer pattern and special-token ids read from the dashscope package's
``qwen_tokenizer.py``, over every text of the shipped data set and a few harder ones.
"""

import ast
import glob
import importlib.metadata
import json
import os
import subprocess
import sys
import unicodedata
import zipfile

import pytest
from robot_llm_planner.cli.qwen_tokenizer import (parse_ranks, QWEN_PATTERN, read_tiktoken,
                                                  SPECIAL_TOKENS, TokenizerSourceError)
from robot_llm_planner.core.prompt import PromptBuilder, SYSTEM_PROMPT, SYSTEM_PROMPT_BEFORE_0_9_3
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHSCOPE = importlib.metadata.distribution('dashscope')
TIKTOKEN_FILE = str(DASHSCOPE.locate_file('dashscope/resources/qwen.tiktoken'))
HARD_TEXTS = [
    'Hello, world!', "I'm here, you're there; we'll see.\n\n  Don't", '12345 and 6.78',
    'go to the kitchen 然后开灯 😀', '\t\r\n  \n', '   leading and trailing   ',
    'ＡＢＣ full width，１２３', 'e\u0301 cafe\u0301 (decomposed)', '龘靐麤𠮷 rare characters',
    '把 手机 给我', '去客厅\n然后回来', 'rm -rf / && echo "done"', '<|im_end|> in text',
    '1234567890' * 5, '؟ سلام Привет 안녕하세요', '####====----', '水' * 40]


def _dashscope_facts():
    """Return Qwen's pattern and first special-token id as dashscope's tokenizer states them."""
    path = DASHSCOPE.locate_file('dashscope/tokenizers/qwen_tokenizer.py')
    facts = {}
    for node in ast.parse(open(str(path), encoding='utf-8').read()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            facts[node.targets[0].id] = node.value.value
    return facts['PAT_STR'], facts['SPECIAL_START_ID']


def shipped_texts():
    """Return every text of the shipped data set, the prompts and the skills."""
    texts = []
    for path in sorted(glob.glob(os.path.join(ROOT, 'training', 'data', 'task*_prompt0_*.json'))):
        with open(path, encoding='utf-8') as stream:
            for row in json.load(stream):
                texts += [row['instruction'], row['input'], row['output']]
    with open(os.path.join(ROOT, 'training', 'prompts.yaml'), encoding='utf-8') as stream:
        for value in yaml.safe_load(stream)['prompts'].values():
            texts += list(value.values()) if isinstance(value, dict) else [value]
    with open(os.path.join(ROOT, 'config', 'skills.yaml'), encoding='utf-8') as stream:
        texts += list(yaml.safe_load(stream)['skills'])
    texts += [SYSTEM_PROMPT, SYSTEM_PROMPT_BEFORE_0_9_3]
    return [text for text in texts if text]


@pytest.fixture(scope='module')
def tiktoken_encoding(monkeypatch_module):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    monkeypatch_module.setenv('TIKTOKEN_CACHE_DIR', '')  # read the file, cache nothing
    pattern, first_special = _dashscope_facts()
    return tiktoken.Encoding(
        'qwen', pat_str=pattern, mergeable_ranks=load_tiktoken_bpe(TIKTOKEN_FILE),
        special_tokens={token: first_special + index for index, token in
                        enumerate(SPECIAL_TOKENS)})


@pytest.fixture(scope='module')
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope='module')
def tokenizer(qwen_tokenizer):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(qwen_tokenizer)


def test_equal_to_tiktoken_on_the_shipped_data(tokenizer, tiktoken_encoding):
    texts = shipped_texts()
    assert len(texts) > 16000
    prompts = [PromptBuilder().text(command) for command in texts[:200]]  # special tokens too
    texts += HARD_TEXTS + prompts
    ours = tokenizer(texts, add_special_tokens=False)['input_ids']
    expected = [tiktoken_encoding.encode(unicodedata.normalize('NFC', text),
                                         allowed_special='all') for text in texts]
    assert [text for text, a, b in zip(texts, ours, expected) if a != b] == []
    for text, ids in zip(texts, ours):
        assert tokenizer.decode(ids) == unicodedata.normalize('NFC', text)


def test_the_pattern_is_dashscopes():
    assert QWEN_PATTERN == _dashscope_facts()[0]


def test_special_tokens_and_size(tokenizer, qwen_tokenizer):
    assert len(tokenizer) == 151646  # Qwen1.5-7B's embedding pads this to 151,936 rows
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [151643, 151644, 151645]
    assert tokenizer.all_special_ids == [151643, 151644, 151645]
    assert tokenizer.eos_token == tokenizer.pad_token == '<|endoftext|>'
    assert tokenizer.bos_token is None and tokenizer.unk_token is None
    assert tokenizer.encode('<|im_start|>user\n', add_special_tokens=False) == [151644, 872, 198]
    with open(os.path.join(qwen_tokenizer, 'tokenizer_config.json'), encoding='utf-8') as stream:
        config = json.load(stream)
    assert config['tokenizer_class'] == 'Qwen2Tokenizer' and config['model_max_length'] == 32768
    assert config['errors'] == 'replace' and config['clean_up_tokenization_spaces'] is False


@pytest.mark.parametrize('text,ids', [
    ('Hello, world!', [9707, 11, 1879, 0]),
    ('帮我拿一瓶水。', [108965, 99674, 113472, 52510, 1773]),
    ('寻找物体，一瓶水', [104243, 109840, 3837, 113472, 52510]),
    ('龘', [82912, 246]),                      # one character, two byte-level tokens
    ('  12', [220, 220, 16, 17]),              # digits one by one
])
def test_fixed_encodings(tokenizer, text, ids):
    assert tokenizer.encode(text, add_special_tokens=False) == ids


def test_every_token_of_two_or_more_bytes_has_one_merge(qwen_tokenizer):
    with open(os.path.join(qwen_tokenizer, 'tokenizer.json'), encoding='utf-8') as stream:
        model = json.load(stream)['model']
    assert len(model['merges']) == len(model['vocab']) - 256 == 151387
    assert all(''.join(merge) in model['vocab'] for merge in model['merges'])
    assert len({''.join(merge) for merge in model['merges']}) == 151387


def test_a_downloaded_wheel_is_read_like_the_installed_file(tmp_path):
    wheel = tmp_path / 'dashscope-2.0.2-py3-none-any.whl'
    with zipfile.ZipFile(wheel, 'w') as archive:
        archive.write(TIKTOKEN_FILE, 'dashscope/resources/qwen.tiktoken')
    assert read_tiktoken(str(wheel)) == read_tiktoken() == read_tiktoken(TIKTOKEN_FILE)


def _cli(*argv, python_options=()):
    return subprocess.run([sys.executable, *python_options, '-m', 'robot_llm_planner.cli',
                           'qwen-tokenizer', *argv], capture_output=True, text=True)


def test_without_dashscope_the_error_names_the_package(tmp_path):
    # -S: no site-packages, so no dashscope distribution (the package needs none to start)
    result = _cli(str(tmp_path / 'out'), python_options=['-S'])
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'the PyPI package dashscope' in result.stderr and 'not installed' in result.stderr
    assert not (tmp_path / 'out').exists()


def test_bad_sources_get_clear_errors(tmp_path):
    lines = read_tiktoken().splitlines()
    cases = {
        'missing.whl': (None, 'no such file'),
        'other.whl': ({'other/file.txt': b'x'}, 'not a dashscope wheel'),
        'short.tiktoken': (b'\n'.join(lines[:1000]), "not Qwen's qwen.tiktoken"),
        'bad.tiktoken': (b'\n'.join(lines[:5] + [b'!!notbase64 5']), 'line 6'),
        'fields.tiktoken': (b'\n'.join(lines[:5] + [b'IQ== 5 7']), 'line 6'),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if isinstance(content, dict):
            with zipfile.ZipFile(path, 'w') as archive:
                for member, data in content.items():
                    archive.writestr(member, data)
        elif content is not None:
            path.write_bytes(content)
        result = _cli(str(tmp_path / 'out'), '--dashscope', str(path))
        assert result.returncode == 2 and 'Traceback' not in result.stderr, name
        assert message in result.stderr, (name, result.stderr)
    with pytest.raises(TokenizerSourceError, match='duplicate'):
        parse_ranks(b'\n'.join(lines[:3] + lines[:1]))


def test_cli_writes_a_tokenizer_directory(qwen_tokenizer):
    assert sorted(os.listdir(qwen_tokenizer)) == ['tokenizer.json', 'tokenizer_config.json']
