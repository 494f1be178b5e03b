"""
Train/serve parity: our prompt ids equal the ids LLaMA-Factory's qwen template encodes.

On the tests' small byte-level BPE and on Qwen1.5's real tokenizer (``cli qwen-tokenizer``),
in which an instruction's final 。 and the newline before the command are one token.
"""

from llamafactory.data.converter import AlpacaDatasetConverter
from llamafactory.data.parser import DatasetAttr
from llamafactory.data.template import get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments
import pytest
from robot_llm_planner.core.prompt import (join_query, PromptBuilder, SYSTEM_PROMPT,
                                           SYSTEM_PROMPT_BEFORE_0_9_3)
from transformers import AutoTokenizer

COMMANDS = ['帮我拿一瓶水。', '把红色的杯子放到厨房的桌子上', 'go to the kitchen 然后开灯 😀',
            '  能不能帮我把遥控器拿给爸爸？ ']
SYSTEMS = [SYSTEM_PROMPT, SYSTEM_PROMPT_BEFORE_0_9_3, '你是一个家庭服务机器人。', '']
INSTRUCTIONS = ['', '你是家庭机器人的任务规划器，请把指令分解为动作。']


@pytest.fixture(scope='module', params=['tiny', 'qwen1.5'])
def tokenizers(request):
    """Return (a tokenizer LLaMA-Factory's template fixed, a fresh one, the template)."""
    directory = request.getfixturevalue('tiny_model' if request.param == 'tiny'
                                        else 'qwen_tokenizer')
    tokenizer = AutoTokenizer.from_pretrained(directory)
    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template='qwen'))
    return tokenizer, AutoTokenizer.from_pretrained(directory), template


def _llamafactory_ids(tokenizer, template, command, system, instruction):
    converter = AlpacaDatasetConverter(DatasetAttr('file', 'commands'), DataArguments())
    example = converter({'instruction': instruction, 'input': command, 'output': ''})
    messages = example['_prompt'] + [{'role': 'assistant', 'content': ''}]
    prompt_ids, _ = template.encode_oneturn(tokenizer, messages, system or None)
    return prompt_ids


@pytest.mark.parametrize('instruction', INSTRUCTIONS, ids=['no-instruction', 'instruction'])
@pytest.mark.parametrize('system', SYSTEMS, ids=['0.9.5', 'before-0.9.3', 'custom', 'empty'])
def test_token_ids_equal_llamafactory(tokenizers, system, instruction):
    lf_tokenizer, ours, template = tokenizers  # ours: a fresh tokenizer, not fixed by LF
    builder = PromptBuilder(system=system, instruction=instruction)
    for command in COMMANDS:
        expected = _llamafactory_ids(lf_tokenizer, template, command, system, instruction)
        assert builder.token_ids(ours, command) == expected
        assert ours.decode(expected) == builder.text(command)


def test_default_system_is_llamafactory_0_9_5(tokenizers):
    _, _, template = tokenizers
    assert template.default_system == SYSTEM_PROMPT


def test_query_joins_like_the_alpaca_converter():
    assert join_query('去厨房', '请规划') == '请规划\n去厨房'
    assert join_query('去厨房') == '去厨房'
    assert PromptBuilder(system='s').messages('去厨房') == [
        {'role': 'system', 'content': 's'}, {'role': 'user', 'content': '去厨房'}]
