"""A multilayer perceptron for CIFAR-10, built on a hand-written linear layer."""
import math
from typing import List, Tuple

import torch
from torch import nn


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int) -> None:
        """A fully connected layer, ``y = x W^T + b``.

        Args:
            in_features: size of each input sample.
            out_features: size of each output sample.
        """
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The same default as torch.nn.Linear, so the layer is usable on its own;
        # MLP overrides it with Glorot initialisation.
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # input [*, in_features] -> [*, out_features]
        return input @ self.weight.T + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class MLP(nn.Module):
    def __init__(self, input_size: int, hidden_sizes: List[int], num_classes: int,
                 activation: str = "relu"):
        """Hidden ``Linear`` layers, each followed by the activation, then an output ``Linear``.

        Args:
            input_size: number of input features (3072 for a flattened 3x32x32 image).
            hidden_sizes: width of each hidden layer; at least two layers.
            num_classes: number of output logits.
            activation: ``'relu'``, ``'tanh'`` or ``'sigmoid'``.
        """
        super().__init__()
        self.input_size = input_size
        self.hidden_sizes = hidden_sizes
        self.num_classes = num_classes
        self.activation = activation
        assert len(hidden_sizes) > 1, "You should at least have one hidden layer"
        assert activation in ['tanh', 'relu', 'sigmoid'], "Invalid choice of activation"

        self.hidden_layers, self.output_layer = self._build_layers(input_size, hidden_sizes, num_classes)

        self._initialize_linear_layer(self.output_layer)
        for layer in self.hidden_layers:
            self._initialize_linear_layer(layer)

    def _build_layers(self, input_size: int, hidden_sizes: List[int],
                      num_classes: int) -> Tuple[nn.ModuleList, nn.Module]:
        """One ``Linear`` per hidden size, then the output ``Linear`` to ``num_classes``."""
        widths = [input_size] + list(hidden_sizes)
        hidden_layers = nn.ModuleList(Linear(fan_in, fan_out) for fan_in, fan_out in zip(widths[:-1], widths[1:]))
        output_layer = Linear(widths[-1], num_classes)
        return hidden_layers, output_layer

    def activation_fn(self, activation, inputs: torch.Tensor) -> torch.Tensor:
        """Apply the activation named ``activation`` to ``inputs``."""
        if activation == "relu":
            return torch.relu(inputs)
        if activation == "tanh":
            return torch.tanh(inputs)
        if activation == "sigmoid":
            return torch.sigmoid(inputs)
        raise ValueError(f"unknown activation {activation!r}; choose one of 'relu', 'tanh', 'sigmoid'")

    def _initialize_linear_layer(self, module: Linear) -> None:
        """Zero bias, Glorot (Xavier) normal weight."""
        nn.init.zeros_(module.bias)
        nn.init.xavier_normal_(module.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            images: ``[batch, channels, height, width]`` or already flat ``[batch, input_size]``.

        Returns:
            logits ``[batch, num_classes]``.
        """
        x = images.reshape(images.shape[0], -1)  # reshape, not view: channels_last input is not contiguous
        for layer in self.hidden_layers:
            x = self.activation_fn(self.activation, layer(x))
        return self.output_layer(x)
