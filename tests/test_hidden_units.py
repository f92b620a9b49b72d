"""What a trained MLP's hidden units let through their activation (training.hidden_units), against values worked out
by hand with the math module from known pre-activations."""
import math

import pytest
import torch

from mlp import MLP
from training.hidden_units import hidden_unit_statistics, summary_line

# two images of two features each, in two batches; with identity weights the first hidden layer's inputs are these
BATCHES = [[torch.tensor([[0.0, -3.0]]), torch.tensor([0])], [torch.tensor([[2.0, -0.5]]), torch.tensor([1])]]
FIRST_INPUTS = [[0.0, -3.0], [2.0, -0.5]]

SLOPES = {
    "relu": (lambda z: 1.0 if z > 0 else 0.0, lambda z: max(z, 0.0), 1.0),
    "tanh": (lambda z: 1 - math.tanh(z) ** 2, math.tanh, 1.0),
    "sigmoid": (lambda z: math.exp(-z) / (1 + math.exp(-z)) ** 2, lambda z: 1 / (1 + math.exp(-z)), 0.25),
}


def identity_mlp(activation):
    model = MLP(2, [2, 2], 2, activation)
    with torch.no_grad():
        for layer in model.hidden_layers:
            layer.weight.copy_(torch.eye(2))
            layer.bias.zero_()
    return model


def expected_layer(inputs, slope, peak):
    slopes = [[slope(z) for z in image] for image in inputs]
    flat = [[s < 0.1 * peak for s in image] for image in slopes]
    pairs = len(inputs) * len(inputs[0])
    return {"units": len(inputs[0]), "mean_derivative": sum(map(sum, slopes)) / pairs,
            "flat_share": sum(map(sum, flat)) / pairs,
            "units_always_flat": sum(all(image[unit] for image in flat) for unit in range(len(inputs[0])))
            / len(inputs[0])}


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_each_hidden_layers_slopes_and_flat_units_match_a_hand_computation(activation):
    slope, activate, peak = SLOPES[activation]
    second_inputs = [[activate(z) for z in image] for image in FIRST_INPUTS]  # identity weights again
    model = identity_mlp(activation)
    stats = hidden_unit_statistics(model, BATCHES, torch.device("cpu"))
    assert {key: stats[key] for key in ("activation", "derivative_peak", "flat_below", "images")} == {
        "activation": activation, "derivative_peak": peak, "flat_below": 0.1, "images": 2}
    for got, inputs in zip(stats["layers"], (FIRST_INPUTS, second_inputs)):
        assert got == pytest.approx(expected_layer(inputs, slope, peak), abs=1e-6)
    assert len(stats["layers"]) == 2


def test_the_inputs_chosen_make_every_measure_differ_between_activations():
    """So that the test above tells the activations' formulas apart: the relu's second unit is negative on both
    images (dead), and -3 and 2 are in the flat tails of tanh but not of sigmoid."""
    first = {name: expected_layer(FIRST_INPUTS, slope, peak) for name, (slope, _, peak) in SLOPES.items()}
    assert first["relu"]["units_always_flat"] == 0.5 and first["tanh"]["units_always_flat"] == 0
    assert first["tanh"]["flat_share"] == 0.5 and first["sigmoid"]["flat_share"] == 0
    assert len({round(stats["mean_derivative"], 6) for stats in first.values()}) == 3


def test_it_leaves_the_model_as_it_found_it():
    model = identity_mlp("tanh").train()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    hidden_unit_statistics(model, BATCHES, torch.device("cpu"))
    assert model.training
    assert all(not layer._forward_hooks for layer in model.hidden_layers)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    hidden_unit_statistics(model.eval(), BATCHES, torch.device("cpu"))
    assert not model.training


def test_the_console_line_lists_each_layers_measures_with_a_dash_for_a_missing_mean():
    stats = hidden_unit_statistics(identity_mlp("relu"), BATCHES, torch.device("cpu"))
    stats["layers"][1]["mean_derivative"] = None  # an input that was not finite
    assert summary_line(stats) == ("hidden layers (relu) on 2 validation images: mean derivative 0.25, -; flat share "
                                   "(derivative under 0.1 x its peak) 0.75, 0.75")
