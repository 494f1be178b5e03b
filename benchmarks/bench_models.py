"""
What the benchmarks share: model shapes, building or loading the model, device timing.

Run from a checkout (the GPU machine has no colcon install): the scripts beside this file put
the repository root on ``sys.path`` before importing the package.
"""

import torch

SHAPES = {
    # Qwen1.5-7B's config.json (the fields that shape compute and memory).
    'qwen1.5-7b': {'vocab_size': 151936, 'hidden_size': 4096, 'intermediate_size': 11008,
                   'num_hidden_layers': 32, 'num_attention_heads': 32,
                   'num_key_value_heads': 32, 'max_position_embeddings': 32768,
                   'rope_theta': 1000000.0, 'tie_word_embeddings': False},
    # The test fixture's shape (test/conftest.py tiny_model).
    'tiny': {'vocab_size': 600, 'hidden_size': 64, 'intermediate_size': 128,
             'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2,
             'max_position_embeddings': 4096, 'tie_word_embeddings': True},
}


def synchronize(device):
    """Wait for queued device work (timers read the host clock)."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def build_model(device, dtype, shape=None, model_dir='', adapter='', **config):
    """
    Return a model on ``device``: ``model_dir`` (``adapter`` merged) or random weights.

    Random weights have the ``shape`` named in :data:`SHAPES`, with ``config`` overrides
    (e.g. vocab_size, eos_token_id), built directly on the device in ``dtype``.
    """
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
    if model_dir:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        if adapter:
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        model.to(device)
    else:
        torch.manual_seed(0)
        qwen2 = Qwen2Config(**dict(SHAPES[shape], **config))
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = Qwen2ForCausalLM(qwen2)
        finally:
            torch.set_default_dtype(default)
    model.eval()
    synchronize(device)
    return model
