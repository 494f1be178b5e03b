"""
A model directory made ready for the local backend: checked, on its device, adapters merged.

The phases of :meth:`TransformersBackend.load
<robot_llm_planner.inference.transformers_backend.TransformersBackend.load>`, one function
each: :func:`check_files` (before anything heavy), :func:`resolve_device` and
:func:`resolve_dtype` (the ``model.device`` and ``model.dtype`` settings), :func:`load_tokenizer`
(left padding for batches), :func:`load_model` (weights, LoRA adapters merged as LLaMA-Factory
does for inference, int8 if asked, on the device) and :func:`decode_by_settings_alone`. Every
failure is a :class:`~robot_llm_planner.core.backend.ModelLoadError` that names the setting at
fault.
"""

import json
import os
from typing import List, Optional, Sequence

from robot_llm_planner.core.backend import ModelLoadError
from robot_llm_planner.core.prompt import ENDOFTEXT
from robot_llm_planner.core.settings import DTYPES, parse_device
import torch


def check_files(model_path: str, adapters: Sequence[str]) -> None:
    """Raise ModelLoadError unless the model and every adapter directory look loadable."""
    if not model_path:
        raise ModelLoadError('model.path is empty: set it to the base (or merged) model '
                             'directory, e.g. Qwen1.5-7B')
    if not os.path.isdir(model_path):
        raise ModelLoadError('model.path: model directory %s does not exist' % model_path)
    if not os.path.isfile(os.path.join(model_path, 'config.json')):
        raise ModelLoadError('model.path: %s has no config.json; is it a model directory?'
                             % model_path)
    for adapter in adapters:
        if not os.path.isdir(adapter):
            raise ModelLoadError('model.adapter_path: adapter directory %s does not exist'
                                 % adapter)
        if not os.path.isfile(os.path.join(adapter, 'adapter_config.json')):
            raise ModelLoadError('model.adapter_path: %s has no adapter_config.json; is it '
                                 'a PEFT/LLaMA-Factory LoRA output directory?' % adapter)


def resolve_device(setting: str) -> torch.device:
    """Return the device ``model.device`` names (auto: CUDA if there is one, else the CPU)."""
    try:
        kind, index = parse_device(setting or 'auto')
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    if kind == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if kind == 'cpu':
        return torch.device('cpu')
    if not torch.cuda.is_available():
        raise ModelLoadError('model.device is %r but CUDA is not available on this '
                             'machine (use cpu or auto)' % setting)
    if (index or 0) >= torch.cuda.device_count():
        raise ModelLoadError('model.device is %r but this machine has %d CUDA device(s)'
                             % (setting, torch.cuda.device_count()))
    return torch.device('cuda', index or 0)


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """Return the dtype ``model.dtype`` names (auto: bfloat16 on CUDA, float32 on the CPU)."""
    name = (setting or 'auto').strip().lower()
    if name not in DTYPES:
        raise ModelLoadError('model.dtype must be one of %s, got %r'
                             % (', '.join(DTYPES), setting))
    if name == 'auto':
        return torch.bfloat16 if device.type == 'cuda' else torch.float32
    return getattr(torch, name)


def load_tokenizer(model_path: str):
    """Return the model's tokenizer, padding on the left (batches end where the answer starts)."""
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as exc:
        raise ModelLoadError('model.path: cannot load the tokenizer from %s: %s'
                             % (model_path, exc)) from exc
    tokenizer.padding_side = 'left'
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = ENDOFTEXT if ENDOFTEXT in tokenizer.get_vocab() \
            else tokenizer.eos_token
    return tokenizer


def load_model(model_path: str, adapters: List[str], device: torch.device, dtype: torch.dtype,
               quantization: str = 'none'):
    """Return the model in eval mode on ``device``, ``adapters`` merged in order (then int8)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    except torch.cuda.OutOfMemoryError as exc:
        raise ModelLoadError(_oom_message(model_path, device, exc)) from exc
    except Exception as exc:
        raise ModelLoadError('model.path: cannot load the model from %s: %s'
                             % (model_path, exc)) from exc
    for adapter in adapters:
        model = _merge_adapter(model, adapter, model_path)
    try:
        model.to(device)
        if quantization == 'int8':
            from robot_llm_planner.inference.quantize import quantize_int8
            quantize_int8(model)  # after merging: the adapters are in the weights
    except torch.cuda.OutOfMemoryError as exc:
        raise ModelLoadError(_oom_message(model_path, device, exc)) from exc
    return model.eval()


def decode_by_settings_alone(model, tokenizer, stop_ids: List[int]) -> None:
    """
    Replace the model's generation config by one that only names the stop and pad tokens.

    Decoding is set by generation.* alone, on both paths: nothing of the model's
    generation_config.json (a chat model's top_k or repetition_penalty, a
    no_repeat_ngram_size) may change the plan. generate() fills unset values from it.
    """
    from transformers import GenerationConfig as HFGenerationConfig
    model.generation_config = HFGenerationConfig(
        bos_token_id=model.generation_config.bos_token_id, eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id)


def _oom_message(path: str, device, exc: Exception) -> str:
    return ('out of GPU memory on %s while loading %s (model.dtype bfloat16 halves float32; '
            'free the GPU or use a smaller model): %s' % (device, path, exc))


def _adapter_base(adapter: str) -> Optional[str]:
    try:
        with open(os.path.join(adapter, 'adapter_config.json'), encoding='utf-8') as stream:
            return json.load(stream).get('base_model_name_or_path')
    except (OSError, ValueError):
        return None


def _merge_adapter(model, adapter: str, model_path: str):
    from peft import PeftModel
    try:
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        if hasattr(merged, 'peft_config'):
            del merged.peft_config  # merged into the weights: the next adapter starts clean
    except Exception as exc:  # PEFT raises RuntimeError, ValueError, KeyError, safetensors errors
        text = str(exc)
        if 'size mismatch' in text or 'shape' in text.lower():
            raise ModelLoadError(
                'model.adapter_path: adapter %s does not fit model.path %s: it was trained on a '
                'different base (adapter_config.json says base %r); shapes differ: %s'
                % (adapter, model_path, _adapter_base(adapter), text.splitlines()[0][:300])
            ) from exc
        raise ModelLoadError('model.adapter_path: cannot load adapter %s: %s'
                             % (adapter, text.splitlines()[0][:300] if text else repr(exc))
                             ) from exc
    return merged
