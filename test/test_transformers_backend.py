"""The local backend: LLaMA-Factory parity, batching, the fast path and every load error."""

import json
import os
import shutil

import pytest

from robot_llm_planner.core.backend import EngineError, GenerationConfig, ModelLoadError
from robot_llm_planner.core.prompt import PromptBuilder
from robot_llm_planner.inference.transformers_backend import TransformersBackend

COMMANDS = ['帮我拿一瓶水。', '把红色的杯子放到厨房的桌子上', '去客厅', '打开冰箱门']
GREEDY = GenerationConfig(max_new_tokens=24)
PROMPT = PromptBuilder()


def _load(model, adapter='', **kwargs):
    backend = TransformersBackend(model, adapter, device='cpu', **kwargs)
    backend.load()
    return backend


def _texts(backend, commands=COMMANDS, prompt=PROMPT, config=GREEDY):
    return [g.text for g in backend.generate(commands, prompt, config)]


@pytest.fixture(scope='module')
def merged(tiny_model, tiny_adapter):
    return _load(tiny_model, tiny_adapter, fast_path='off')


@pytest.mark.slow
def test_greedy_output_equals_llamafactory_chat_model(tiny_model, tiny_adapter, merged):
    from llamafactory.chat import ChatModel
    chat = ChatModel({'model_name_or_path': tiny_model, 'adapter_name_or_path': tiny_adapter,
                      'template': 'qwen', 'finetuning_type': 'lora',
                      'infer_backend': 'huggingface', 'do_sample': False,
                      'max_new_tokens': GREEDY.max_new_tokens})
    expected = [chat.chat([{'role': 'user', 'content': c}])[0].response_text for c in COMMANDS]
    assert _texts(merged) == expected
    one_by_one = [_texts(merged, [c])[0] for c in COMMANDS]
    assert one_by_one == expected


def test_adapter_changes_the_output(tiny_model, merged):
    assert _texts(_load(tiny_model, fast_path='off')) != _texts(merged)


def test_batch_equals_one_by_one(merged):
    assert _texts(merged) == [_texts(merged, [c])[0] for c in COMMANDS]


def test_greedy_is_deterministic(merged):
    assert _texts(merged) == _texts(merged)


@pytest.mark.parametrize('draft_tokens', [0, 1, 4])
def test_fast_path_equals_generate(tiny_model, tiny_adapter, merged, draft_tokens):
    fast = _load(tiny_model, tiny_adapter, fast_path='on', draft_tokens=draft_tokens)
    assert fast.decoder is not None
    for max_new in (1, 5, 24):
        config = GenerationConfig(max_new_tokens=max_new)
        assert _texts(fast, config=config) == _texts(merged, config=config)


@pytest.mark.slow
@pytest.mark.parametrize('draft_tokens', [0, 1, 4])
def test_fast_path_reports_truncation_like_generate(trained_model, draft_tokens):
    # A budget of exactly the answer's length leaves no room for the stop token: cut off on
    # both paths, even when a verify pass sees the stop token past the budget. The trained
    # model's answers end (the random tiny model's seldom do within a budget).
    plain = _load(trained_model.base, trained_model.adapter, fast_path='off')
    fast = _load(trained_model.base, trained_model.adapter, fast_path='on',
                 draft_tokens=draft_tokens)
    commands = trained_model.correct[:4]
    assert commands
    for command in commands:
        full = plain.generate([command], PROMPT, GenerationConfig(max_new_tokens=256))[0]
        assert full.finished
        for budget in (full.tokens, full.tokens + 1):
            config = GenerationConfig(max_new_tokens=budget)
            expected = plain.generate([command], PROMPT, config)[0]
            got = fast.generate([command], PROMPT, config)[0]
            assert 'decode_passes' in got.stats  # the fast path served it
            assert (got.text, got.tokens, got.finished) == \
                (expected.text, expected.tokens, expected.finished), (command, budget)
            assert got.finished == (budget > full.tokens)


def test_several_commands_are_one_batch_even_with_the_fast_path(
        tiny_model, tiny_adapter, merged):
    fast = _load(tiny_model, tiny_adapter, fast_path='on')
    batch = fast.generate(COMMANDS, PROMPT, GREEDY)
    assert [g.stats.get('batch_size') for g in batch] == [len(COMMANDS)] * len(COMMANDS)
    assert [g.text for g in batch] == _texts(merged)
    assert 'decode_passes' in fast.generate(COMMANDS[:1], PROMPT, GREEDY)[0].stats


def test_the_models_generation_config_does_not_change_the_plan(
        tiny_model, tiny_adapter, merged, tmp_path):
    # A chat model's generation_config.json may ask for top_k, a repetition penalty or a
    # no_repeat_ngram_size: decoding follows generation.* only, on both paths.
    model = str(tmp_path / 'model')
    shutil.copytree(tiny_model, model)
    path = os.path.join(model, 'generation_config.json')
    settings = {}
    if os.path.exists(path):
        with open(path, encoding='utf-8') as stream:
            settings = json.load(stream)
    settings.update(no_repeat_ngram_size=2, repetition_penalty=1.5, top_k=1, do_sample=True)
    with open(path, 'w', encoding='utf-8') as stream:
        json.dump(settings, stream)
    for fast_path in ('off', 'on'):
        backend = _load(model, tiny_adapter, fast_path=fast_path)
        assert _texts(backend) == _texts(merged), fast_path
    sampled = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=5.0, top_p=1.0)
    texts = {g.text for g in backend.generate(COMMANDS[:1] * 8, PROMPT, sampled)}
    assert len(texts) > 1  # top_k 1 of the file would make every sample the same


def test_generation_reports_tokens_and_truncation(merged):
    # the untrained model does not stop within 3 tokens: the budget cuts it (the trained
    # model's finished answers: test_fast_path_reports_truncation_like_generate)
    generation = merged.generate(['去客厅'], PROMPT, GenerationConfig(max_new_tokens=3))[0]
    assert generation.tokens == 3 and generation.prompt_tokens > 10
    assert not generation.finished


def test_stop_token_is_im_end(merged):
    assert merged.stop_ids == [merged.tokenizer.convert_tokens_to_ids('<|im_end|>')]


def test_sampling_runs(merged):
    config = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.0, top_p=1.0)
    assert len(merged.generate(COMMANDS[:2], PROMPT, config)) == 2


def test_describe(tiny_model, tiny_adapter, merged):
    assert merged.describe() == {'backend': 'transformers', 'base': tiny_model,
                                 'adapter': tiny_adapter}


def test_several_adapters_merge_in_order(tiny_model, tiny_adapter, merged):
    both = _load(tiny_model, tiny_adapter + ',' + tiny_adapter, fast_path='off')
    assert both.adapters == [tiny_adapter, tiny_adapter]
    assert _texts(both) != _texts(merged)  # the second merge doubles the update


# ------------------------------------------------------------------- errors
def _error(model, adapter='', **kwargs):
    with pytest.raises(ModelLoadError) as info:
        _load(model, adapter, **kwargs)
    return str(info.value)


def test_threads_sets_the_models_cpu_threads_and_zero_keeps_torchs(tiny_model):
    import torch
    before = torch.get_num_threads()
    try:
        _load(tiny_model, threads=0)
        assert torch.get_num_threads() == before
        backend = _load(tiny_model, threads=1)
        assert torch.get_num_threads() == 1
        assert backend.generate(['去客厅'], PromptBuilder(), GenerationConfig(max_new_tokens=4))
    finally:
        torch.set_num_threads(before)


def test_missing_model_directory(tmp_path):
    message = _error(str(tmp_path / 'Qwen1.5-7B'))
    assert message.startswith('model.path:') and 'Qwen1.5-7B does not exist' in message


def test_empty_model_path():
    assert 'model.path is empty' in _error('')


def test_directory_without_config(tmp_path):
    assert 'has no config.json' in _error(str(tmp_path))


def test_missing_adapter_directory(tiny_model, tmp_path):
    message = _error(tiny_model, str(tmp_path / 'lora-task2'))
    assert message.startswith('model.adapter_path:') and 'lora-task2 does not exist' in message


def test_adapter_directory_without_config(tiny_model, tmp_path):
    assert 'has no adapter_config.json' in _error(tiny_model, str(tmp_path))


def test_corrupt_adapter_file(tiny_model, tiny_adapter, tmp_path):
    broken = tmp_path / 'broken'
    shutil.copytree(tiny_adapter, broken)
    (broken / 'adapter_model.safetensors').write_bytes(b'\x00garbage' * 10)
    message = _error(tiny_model, str(broken))
    assert message.startswith('model.adapter_path: cannot load adapter') and 'broken' in message


def test_adapter_for_a_different_base(other_model, tiny_adapter):
    message = _error(other_model, tiny_adapter)
    assert 'trained on a different base' in message
    assert tiny_adapter in message and other_model in message


@pytest.mark.parametrize('device,expected', [
    ('cuda', "model.device is 'cuda' but CUDA is not available"),
    ('cuda:3', "model.device is 'cuda:3' but CUDA is not available"),
    ('tpu', 'model.device must be auto, cpu, cuda or cuda:N'),
])
def test_bad_device(tiny_model, device, expected):
    import torch
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA, so these devices may exist')
    with pytest.raises(ModelLoadError, match=expected.replace('(', r'\(')):
        TransformersBackend(tiny_model, device=device).load()


def test_bad_dtype(tiny_model):
    assert 'model.dtype must be one of' in _error(tiny_model, dtype='int3')


def test_corrupt_model_weights(tiny_model, tmp_path):
    broken = tmp_path / 'model'
    shutil.copytree(tiny_model, broken)
    (broken / 'model.safetensors').write_bytes(b'not safetensors')
    message = _error(str(broken))
    assert message.startswith('model.path: cannot load the model from') and str(broken) in message


def test_config_of_another_architecture(tiny_model, tmp_path):
    broken = tmp_path / 'model'
    shutil.copytree(tiny_model, broken)
    config = json.loads((broken / 'config.json').read_text())
    config['model_type'] = 'no_such_architecture'
    (broken / 'config.json').write_text(json.dumps(config))
    assert 'model.path: cannot load' in _error(str(broken))


def test_generate_before_load_is_an_engine_error(tiny_model):
    with pytest.raises(EngineError, match='not loaded'):
        TransformersBackend(tiny_model).generate(['x'], PROMPT, GREEDY)


def test_too_long_prompt_is_an_engine_error(merged):
    with pytest.raises(EngineError, match='more than the 512 this backend serves'):
        merged.generate(['水' * 600], PROMPT, GREEDY)


def test_oom_message_names_device_and_path():
    from robot_llm_planner.inference.model_files import _oom_message
    message = _oom_message('/models/Qwen1.5-7B', 'cuda:0', RuntimeError('CUDA out of memory'))
    assert 'out of GPU memory on cuda:0 while loading /models/Qwen1.5-7B' in message


def test_model_files_are_untouched(tiny_model, tiny_adapter, merged):
    # Merging happens in memory: the adapter and base directories are never written.
    assert sorted(os.listdir(tiny_adapter)) == ['README.md', 'adapter_config.json',
                                                'adapter_model.safetensors']


def test_ngram_index_drafts_what_followed_the_suffix():
    from robot_llm_planner.inference.decoding import NgramIndex
    index = NgramIndex(max_ngram=2)
    index.extend([5, 6, 7, 8, 9, 5, 6])
    assert index.draft(3) == [7, 8, 9]  # (5, 6) was followed by 7, 8, 9
    index.extend([1])
    assert index.draft(2) == []  # 1 never occurred before
    index.extend([5])
    assert index.draft(4) == [6, 7, 8, 9]  # the 1-gram (5,) matches


def test_auto_takes_the_fast_path_on_the_cpu_too(tiny_model, tiny_adapter, merged):
    backend = _load(tiny_model, tiny_adapter)  # generation.fast_path auto
    assert backend.device.type == 'cpu' and backend.decoder is not None
    generation = backend.generate(COMMANDS[:1], PROMPT, GREEDY)[0]
    assert 'decode_passes' in generation.stats
    assert generation.text == _texts(merged, COMMANDS[:1])[0]


def test_the_default_planner_drafts_on_the_fast_path(tiny_model, tiny_adapter, merged):
    from robot_llm_planner.core.settings import PlannerSettings
    from robot_llm_planner.inference.build import build_planner
    settings = PlannerSettings(model_path=tiny_model, adapter_path=tiny_adapter, device='cpu',
                               constrained=False, max_new_tokens=GREEDY.max_new_tokens)
    planner = build_planner(settings)
    planner.load()
    assert settings.draft_tokens == 8 and planner.backend.decoder.draft_tokens == 8
    assert [planner.plan(c).plan.raw_output for c in COMMANDS] == _texts(merged)


def test_eager_attention_reads_only_the_slots_in_use(merged):
    # Views of the cache up to the position (rounded up to 64 slots) give the answer and the
    # log-probabilities of attention over the whole cache, across several 64-slot steps (the
    # fast path's tests against generate() run with the views).
    from robot_llm_planner.inference.decoding import SLOT_STEP, StaticCacheDecoder
    ids = merged.encode('把红色的杯子放到厨房的桌子上', PROMPT)
    results = {}
    for views in (True, False):
        decoder = StaticCacheDecoder(merged.model, [], merged.tokenizer.pad_token_id, 512, 150,
                                     draft_tokens=3)
        decoder._views = views
        decoder.decode(ids, 8)  # the first prefill allocates the cache
        results[views] = decoder.decode(ids, 150)
        visible = decoder._visible
        assert (visible < decoder._length) == views
    assert visible == decoder._length and len(ids) + 150 > 2 * SLOT_STEP
    assert results[True].tokens == results[False].tokens and len(results[True].tokens) == 150
    assert results[True].logprobs == pytest.approx(results[False].logprobs, abs=1e-5)


@pytest.mark.parametrize('text,parsed', [('auto', ('auto', None)), (' CPU ', ('cpu', None)),
                                         ('cuda', ('cuda', None)), ('cuda:2', ('cuda', 2))])
def test_parse_device(text, parsed):
    from robot_llm_planner.core.settings import parse_device
    assert parse_device(text) == parsed


@pytest.mark.parametrize('text', ['', 'tpu', 'cuda:', 'cuda:x', 'cuda:-1'])
def test_parse_device_refuses(text):
    from robot_llm_planner.core.settings import parse_device
    with pytest.raises(ValueError, match='model.device must be auto, cpu, cuda or cuda:N'):
        parse_device(text)


@pytest.mark.slow
def test_compiled_step_equals_generate(merged, tmp_path, monkeypatch):
    # The CUDA fast path compiles its step (torch.compile, fullgraph); inductor compiles the
    # same graph on the CPU, so the traced step is checked here against plain generate().
    # Inductor's own cache, not the machine's: torch 2.11's cache key leaves out the CPU
    # kernels' instruction set, and a C++ kernel compiled under another ATEN_CPU_CAPABILITY
    # and served from a shared cache crashed the process (SIGBUS).
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'inductor'))
    from robot_llm_planner.inference.decoding import StaticCacheDecoder
    ids = merged.encode('把红色的杯子放到厨房的桌子上', PROMPT)
    expected = merged.generate(['把红色的杯子放到厨房的桌子上'], PROMPT,
                               GenerationConfig(max_new_tokens=20))[0]
    for draft_tokens in (0, 3):
        decoder = StaticCacheDecoder(merged.model, merged.stop_ids, merged.tokenizer.pad_token_id,
                                     128, 20, draft_tokens=draft_tokens, compile_steps=True)
        result = decoder.decode(ids, 20)
        assert decoder.compile_error == ''
        assert merged.tokenizer.decode(result.tokens, skip_special_tokens=True) == expected.text
        assert decoder.decode(ids, 20).tokens == result.tokens  # replayed, same answer


def test_warm_up_decodes_once_when_the_step_is_not_compiled(tiny_model, monkeypatch):
    # A second warm-up generation only records a compiled step (CUDA); eager it is a wasted
    # prefill, for a 7B model on the CPU a long one.
    calls = []
    original = TransformersBackend.generate

    def counting(self, *args, **kwargs):
        calls.append(args[0])
        return original(self, *args, **kwargs)

    backend = _load(tiny_model, fast_path='on')
    monkeypatch.setattr(TransformersBackend, 'generate', counting)
    backend.warm_up(PROMPT)
    assert backend.decoder is not None and not backend.decoder.compiled
    assert len(calls) == 1


@pytest.mark.parametrize('fast_path', ['off', 'on'])
def test_an_answer_cut_inside_a_character_ends_before_it(vllm_model, fast_path):
    """
    As vLLM does: the text of an unfinished answer is the characters its tokens complete.

    Under the plan grammar (the planner's default, and what a remote server is sent) the
    answer is valid UTF-8: only the token limit can leave a character unfinished.
    """
    from robot_llm_planner.core.skills import SkillSet
    from robot_llm_planner.inference.grammar import PlanGrammar
    backend = _load(vllm_model.base, vllm_model.adapters['robot_a'], fast_path=fast_path,
                    grammar=PlanGrammar(SkillSet.load()))
    texts = [backend.generate(['帮我拿一瓶水。'], PROMPT,
                              GenerationConfig(max_new_tokens=count))[0].text
             for count in range(1, 25)]
    assert not any(text.endswith('\ufffd') for text in texts), texts
    assert all(longer.startswith(text) for text, longer in zip(texts, texts[1:]))
    # some tokens complete no character (the tiny vocabulary splits Chinese into bytes)
    assert any(text == longer for text, longer in zip(texts, texts[1:])), texts
