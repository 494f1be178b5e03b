"""
Optional int8 weight-only quantization of a loaded model (``model.quantization: int8``).

Every ``nn.Linear`` inside the decoder layers keeps its weight as int8 with one float scale
per output channel (symmetric, round to nearest); activations stay in the model's dtype and
the weight is dequantized inside the matmul. At batch 1 decoding reads every weight once per
token, so half the bytes of bf16 is up to half the time per token on a GPU, where
``torch.compile`` fuses the dequantization into the matmul. Embeddings and the output layer
stay in full precision. Off by default: measure the quality effect first
(benchmarks/RESULTS.md has the demo model's).
"""

import torch
from torch import nn
import torch.nn.functional as F


class Int8Linear(nn.Module):
    """A linear layer whose weight is int8 with a per-output-channel scale."""

    def __init__(self, linear: nn.Linear) -> None:
        """Quantize ``linear``'s weight (its bias, if any, stays as it is)."""
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer('weight', torch.round(weight / scale[:, None]).clamp(
            -127, 127).to(torch.int8))
        self.register_buffer('scale', scale.to(linear.weight.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x @ (weight * scale).T + bias`` with the weight dequantized on the fly."""
        out = F.linear(x, self.weight.to(x.dtype)) * self.scale
        return out + self.bias if self.bias is not None else out


def quantize_int8(model: nn.Module) -> int:
    """Replace the linear layers of the decoder layers by Int8Linear; return how many."""
    layers = model.get_decoder().layers
    count = 0
    for layer in layers:
        for _, child in list(layer.named_modules()):
            for attribute, module in list(child.named_children()):
                if isinstance(module, nn.Linear):
                    setattr(child, attribute, Int8Linear(module))
                    count += 1
    return count
