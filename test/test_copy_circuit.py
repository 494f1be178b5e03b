"""The planted copy circuit: a random-weight Qwen2 that copies before any training."""

from planner_training.copy_circuit import (copy_accuracy, CopyCircuitError, plant_copy_circuit,
                                           rope_pairs)
import pytest
import torch
import transformers


def qwen2(layers=2, hidden=128, heads=4, rope_theta=1.0e6, seed=0):
    config = transformers.Qwen2Config(
        vocab_size=1200, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, intermediate_size=4 * hidden,
        max_position_embeddings=512, rope_theta=rope_theta, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(config)


def test_random_weights_do_not_copy_and_the_planted_circuit_does(tmp_path):
    model = qwen2()
    assert copy_accuracy(model) < 0.05
    plant_copy_circuit(model)
    assert copy_accuracy(model) > 0.9
    # through the path LLaMA-Factory and the planner load models by
    model.save_pretrained(str(tmp_path))
    loaded = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path))
    assert loaded.config.rope_parameters['rope_theta'] == 1.0e6
    assert copy_accuracy(loaded, seed=1) > 0.9


def test_the_circuit_copies_across_the_whole_context():
    model = qwen2()
    plant_copy_circuit(model)
    # the first copy 150 tokens back: the induction head must not fade with distance
    assert copy_accuracy(model, length=75, batch=4) > 0.85


def test_the_planted_heads_are_the_ones_that_look_one_back_and_match():
    model = qwen2()
    plant_copy_circuit(model)
    model.config._attn_implementation = 'eager'
    ids = torch.randint(300, 1200, (1, 60), generator=torch.Generator().manual_seed(3))
    ids = torch.cat([ids, ids], dim=1)
    with torch.no_grad():
        attentions = model(input_ids=ids, output_attentions=True).attentions
    previous = attentions[0][0, 0]  # layer 0, head 0: (query, key)
    assert all(int(previous[q].argmax()) == q - 1 for q in range(1, 120))
    induction = attentions[1][0, 0]
    # in the second copy, position q attends to where the token after ids[q] was first seen
    assert sum(int(induction[q].argmax()) == q - 59 for q in range(61, 120)) >= 55


def test_models_that_cannot_hold_it_are_refused_with_the_reason():
    with pytest.raises(CopyCircuitError, match='2 layers'):
        plant_copy_circuit(qwen2(layers=1))
    with pytest.raises(CopyCircuitError, match='cannot hold'):
        plant_copy_circuit(qwen2(hidden=64, heads=1))
    with pytest.raises(CopyCircuitError, match='rope_theta'):
        plant_copy_circuit(qwen2(rope_theta=100.0))


def test_rope_pairs_split_slow_and_fast_frequencies():
    slow, fast = rope_pairs(qwen2().config, context=256)
    assert slow == list(range(8, 16))
    assert fast == [0, 1, 2, 3]
