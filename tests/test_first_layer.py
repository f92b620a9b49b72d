"""The numbers behind the first-layer pictures (training.first_layer), against values worked out by hand on weights
built to have them."""
import math

import pytest
import torch

from mlpmixer import MLPMixer
from resnet18 import ResNet18
from training.first_layer import colour_share, first_layer_statistics, local_share, pictured_layer, summary_line


def test_the_colour_share_is_the_weight_off_each_kernels_channel_average():
    gray = torch.ones(1, 3, 3, 3)  # every channel alike: it sees brightness only
    red = torch.zeros(1, 3, 3, 3)
    red[0, 0] = 2.0  # per pixel (2, 0, 0): off the average (2/3) by (4/3, -2/3, -2/3), squares 24/9 of 36/9
    assert colour_share(gray) == 0
    assert colour_share(red) == pytest.approx(2 / 3)
    assert colour_share(torch.cat([gray, red, torch.zeros(1, 3, 3, 3)])) == pytest.approx(1 / 3)  # no weight: left out


def grid_unit(grid_size, *weights):
    """One unit over a ``grid_size`` x ``grid_size`` grid of patches, ``(row, column, weight)`` each."""
    unit = torch.zeros(grid_size, grid_size)
    for row, col, weight in weights:
        unit[row, col] = weight
    return unit.flatten()


def test_the_local_share_is_the_weight_within_three_patches_of_each_units_peak():
    alone = grid_unit(4, (3, 3, 1.0))
    corner = grid_unit(4, (0, 0, -2.0), (3, 3, 1.0))  # the window at the corner is 2x2, without (3, 3)
    inside = grid_unit(4, (1, 2, 3.0), (2, 3, 1.0), (3, 0, 1.0))  # (2, 3) is a neighbour of the peak, (3, 0) is not
    assert local_share(alone[None], 4) == 1
    assert local_share(corner[None], 4) == pytest.approx(4 / 5)
    assert local_share(inside[None], 4) == pytest.approx(10 / 11)
    assert local_share(torch.stack([corner, inside]), 4) == pytest.approx((4 / 5 + 10 / 11) / 2)
    spread = torch.ones(16) + grid_unit(4, (1, 1, 1.0))  # 2 at (1, 1), 1 elsewhere: 4 + 8 of 4 + 15 in the window
    assert local_share(spread[None], 4) == pytest.approx(12 / 19)


def test_a_measure_of_weights_that_are_not_finite_is_null():
    kernels = torch.ones(2, 3, 3, 3)
    kernels[1, 0, 0, 0] = math.nan
    units = torch.ones(2, 16)
    units[0, 5] = math.inf
    assert colour_share(kernels) is None and local_share(units, 4) is None
    assert colour_share(torch.zeros(2, 3, 3, 3)) is None  # no unit with weight to share


@pytest.mark.parametrize("model, weight, measure", [
    (ResNet18(), "conv1.weight", "colour_share"),
    (MLPMixer(10, 32, 4, 16, 2), "blocks.0.mlp_tokens.fc1.weight", "local_share"),
])
def test_the_statistics_compare_the_trained_weights_with_their_initial_copy(model, weight, measure):
    name, parameter, measure_name, measured = pictured_layer(model)
    assert (name, measure_name) == (weight, measure) and parameter is dict(model.named_parameters())[weight]
    initial = parameter.detach().clone()
    with torch.no_grad():
        parameter.mul_(1.5)  # a change of half the initial weights, alike in every share
    stats = first_layer_statistics(model, initial)
    share = measured(initial)
    assert 0 < share < 1
    assert stats == {"weight": weight, "units": len(initial), "measure": measure, "moved": pytest.approx(0.5),
                     "initial": share, "trained": pytest.approx(share), "change": pytest.approx(share)}
    assert summary_line(stats).startswith(f"first layer ({weight}, {len(initial)} units): moved 0.50 of its initial "
                                          "norm; the share of each ")


def test_a_patch_grid_within_one_window_has_no_local_share_but_says_how_far_it_moved():
    model = MLPMixer(10, 32, 16, 16, 1)  # 2x2 patches: every unit lies within 3x3 patches of its peak
    initial = model.blocks[0].mlp_tokens.fc1.weight.detach().clone()
    with torch.no_grad():
        model.blocks[0].mlp_tokens.fc1.weight.zero_()
    stats = first_layer_statistics(model, initial)
    assert stats["measure"] is None and stats["moved"] == pytest.approx(1.0)
    assert stats["initial"] is stats["trained"] is stats["change"] is None
    assert summary_line(stats) == ("first layer (blocks.0.mlp_tokens.fc1.weight, 8 units): moved 1.00 of its "
                                   "initial norm")


def test_the_mlp_has_no_pictured_layer():
    from mlp import MLP

    assert pictured_layer(MLP(12, [4, 4], 2)) is None
