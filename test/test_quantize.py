"""int8 weight-only quantization: accuracy of the layer, and the model still plans."""

from conftest import TRAINED_MODEL_RECIPE
import pytest
from robot_llm_planner.inference.quantize import Int8Linear, quantize_int8
from robot_llm_planner.inference.transformers_backend import TransformersBackend
import torch
from torch import nn


def test_int8_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    linear = nn.Linear(64, 96, bias=True)
    quantized = Int8Linear(linear)
    assert quantized.weight.dtype == torch.int8 and quantized.scale.shape == (96,)
    x = torch.randn(5, 64)
    expected = linear(x)
    error = (quantized(x) - expected).norm() / expected.norm()
    assert error < 1e-2, error
    assert quantized.weight.abs().max() <= 127


def test_quantize_replaces_every_decoder_linear(tiny_model):
    backend = TransformersBackend(tiny_model, device='cpu', fast_path='off')
    backend.load()
    linears = sum(isinstance(m, nn.Linear) for m in backend.model.get_decoder().modules())
    assert quantize_int8(backend.model) == linears == 2 * 7  # q k v o gate up down, 2 layers
    assert not any(isinstance(m, nn.Linear) for m in backend.model.get_decoder().modules())
    assert isinstance(backend.model.lm_head, nn.Linear)  # the output layer stays float


@pytest.mark.slow
def test_quantized_trained_model_keeps_its_answers(trained_model):
    from robot_llm_planner.core.backend import GenerationConfig
    from robot_llm_planner.core.prompt import PromptBuilder
    backend = TransformersBackend(trained_model.base, trained_model.adapter, device='cpu',
                                  quantization='int8')
    backend.load()
    assert backend.describe()['quantization'] == 'int8'
    layers = backend.model.get_decoder().layers
    assert len(layers) == TRAINED_MODEL_RECIPE['layers']
    assert sum(isinstance(m, Int8Linear) for m in layers.modules()) == 7 * len(layers)
    assert not any(isinstance(m, nn.Linear) for m in layers.modules())
    commands = trained_model.correct
    assert commands  # the comparison below is over at least one trained answer
    answers = backend.generate(commands, PromptBuilder(), GenerationConfig(max_new_tokens=64))
    same = sum(answer.text == trained_model.labels[command]
               for command, answer in zip(commands, answers))
    print('\nint8: %d of %d trained answers unchanged' % (same, len(commands)))
    assert same >= 0.9 * len(commands)


def test_unknown_quantization_is_a_load_error(tiny_model):
    from robot_llm_planner.core.backend import ModelLoadError
    with pytest.raises(ModelLoadError, match='model.quantization must be none or int8'):
        TransformersBackend(tiny_model, device='cpu', quantization='int4').load()
