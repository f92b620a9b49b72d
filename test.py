"""Unit tests of the four graded files (mlp.py, resnet18.py, mlpmixer.py, utils.py), on CPU.

Run with ``pytest`` (the whole suite) or ``pytest test.py`` (these checks alone).
"""
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mlp
import mlpmixer
import resnet18
import utils

ROOT = os.path.dirname(os.path.abspath(__file__))
GRADED = ("mlp.py", "resnet18.py", "mlpmixer.py", "utils.py")
MLP_CONFIG = {"input_size": 3072, "hidden_sizes": [1024, 512, 64, 64], "num_classes": 10, "activation": "relu"}
MIXER_CONFIG = {"num_classes": 10, "img_size": 32, "patch_size": 4, "embed_dim": 256, "num_blocks": 4,
                "drop_rate": 0.0, "activation": "gelu"}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def _figures_saved(monkeypatch):
    """``file name -> matplotlib Figure`` of every figure saved from now on, to read what it draws."""
    from matplotlib.figure import Figure

    saved, savefig = {}, Figure.savefig

    def recording(figure, path, *args, **kwargs):
        saved[os.path.basename(path)] = figure
        return savefig(figure, path, *args, **kwargs)
    monkeypatch.setattr(Figure, "savefig", recording)
    return saved


def forward_backward(model, images, num_classes=10):
    """Run one forward and backward pass; return the logits after checking every parameter got a gradient."""
    model.train()
    logits = model(images)
    assert logits.shape == (images.shape[0], num_classes)
    assert torch.isfinite(logits).all()
    utils.cross_entropy_loss(logits, torch.arange(images.shape[0]) % num_classes).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(parameter.grad).all(), f"{name} has a non-finite gradient"
    return logits


# ---------------------------------------------------------------- the files stand alone

def test_graded_files_import_alone(tmp_path):
    for name in GRADED:
        (tmp_path / name).write_text(pathlib.Path(ROOT, name).read_text())
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", "import mlp, resnet18, mlpmixer, utils"], cwd=tmp_path,
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def _in_standard_library(module):
    """Whether the top-level ``module`` is part of Python itself rather than an installed package."""
    names = getattr(sys, "stdlib_module_names", None)  # Python 3.9 has no such list
    return module in names if names is not None else _lies_in_the_standard_library(module)


def _lies_in_the_standard_library(module):
    """Whether ``module`` is built into Python or lies in its library folder, outside the folders of installed
    packages (which may lie inside it)."""
    if module in sys.builtin_module_names:
        return True
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return False
    if spec.origin == "frozen":  # Python 3.11 and later build some of their own modules in this way (os, codecs)
        return True
    origin = os.path.realpath(spec.origin)
    library = os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep
    installed = {os.path.realpath(sysconfig.get_paths()[key]) + os.sep for key in ("purelib", "platlib")}
    return origin.startswith(library) and not any(origin.startswith(folder) for folder in installed)


@pytest.mark.parametrize("module, standard", [("json", True), ("math", True), ("os", True), ("sqlite3", True),
                                              ("torch", False), ("numpy", False), ("pytest", False)])
def test_the_standard_library_is_told_from_installed_packages_as_on_python_3_9(module, standard):
    assert _lies_in_the_standard_library(module) == standard


def test_graded_files_import_only_allowed_modules():
    allowed = {"torch", "numpy", "matplotlib"}
    import ast
    for name in GRADED:
        tree = ast.parse(pathlib.Path(ROOT, name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in allowed or _in_standard_library(root), f"{name} imports {root}"


# the template's signatures (../shared/TEMPLATE_API.md), which the autograder calls by name and by default
TEMPLATE_SIGNATURES = {
    (mlp.Linear, "__init__"): "(self, in_features, out_features)",
    (mlp.Linear, "forward"): "(self, input)",
    (mlp.MLP, "__init__"): "(self, input_size, hidden_sizes, num_classes, activation='relu')",
    (mlp.MLP, "_build_layers"): "(self, input_size, hidden_sizes, num_classes)",
    (mlp.MLP, "activation_fn"): "(self, activation, inputs)",
    (mlp.MLP, "_initialize_linear_layer"): "(self, module)",
    (mlp.MLP, "forward"): "(self, images)",
    (resnet18.BasicBlock, "__init__"): "(self, in_planes, planes, stride=1)",
    (resnet18.BasicBlock, "forward"): "(self, x)",
    (resnet18.ResNet18, "__init__"): "(self, num_classes=10)",
    (resnet18.ResNet18, "_make_layer"): "(self, in_planes, planes, stride)",
    (resnet18.ResNet18, "forward"): "(self, images)",
    (resnet18.ResNet18, "visualize"): "(self, logdir)",
    (mlpmixer.PatchEmbed, "__init__"): "(self, img_size, patch_size, in_chans=3, embed_dim=768)",
    (mlpmixer.PatchEmbed, "forward"): "(self, x)",
    (mlpmixer.Mlp, "__init__"): f"(self, in_features, hidden_features, act_layer={nn.GELU!r}, drop=0.0)",
    (mlpmixer.Mlp, "forward"): "(self, x)",
    (mlpmixer.MixerBlock, "__init__"): "(self, dim, seq_len, mlp_ratio=(0.5, 4.0), activation='gelu', drop=0.0, "
                                       "drop_path=0.0)",
    (mlpmixer.MixerBlock, "forward"): "(self, x)",
    (mlpmixer.MLPMixer, "__init__"): "(self, num_classes, img_size, patch_size, embed_dim, num_blocks, drop_rate=0.0, "
                                     "activation='gelu')",
    (mlpmixer.MLPMixer, "forward"): "(self, images)",
    (mlpmixer.MLPMixer, "visualize"): "(self, logdir)",
    (utils, "generate_plots"): "(list_of_dirs, legend_names, save_path)",
    (utils, "seed_experiment"): "(seed)",
    (utils, "to_device"): "(tensors, device)",
    (utils, "cross_entropy_loss"): "(logits, labels)",
    (utils, "compute_accuracy"): "(logits, labels)",
}


@pytest.mark.parametrize("owner,name", TEMPLATE_SIGNATURES, ids=[f"{getattr(o, '__name__', o)}.{n}"
                                                                 for o, n in TEMPLATE_SIGNATURES])
def test_graded_names_keep_the_templates_signatures(owner, name):
    """Parameter names, order and defaults as the template has them (type annotations aside)."""
    import inspect
    signature = inspect.signature(getattr(owner, name))
    bare = signature.replace(parameters=[p.replace(annotation=inspect.Parameter.empty)
                                         for p in signature.parameters.values()],
                             return_annotation=inspect.Signature.empty)
    assert str(bare) == TEMPLATE_SIGNATURES[owner, name]


# ---------------------------------------------------------------- mlp.py

def test_linear_matches_reference():
    layer = mlp.Linear(7, 5)
    assert isinstance(layer.weight, nn.Parameter) and layer.weight.shape == (5, 7)
    assert isinstance(layer.bias, nn.Parameter) and layer.bias.shape == (5,)
    x = torch.randn(3, 4, 7)
    torch.testing.assert_close(layer(x), x @ layer.weight.T + layer.bias)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert not any(isinstance(m, nn.Linear) for m in mlp.MLP(12, [8, 6], 3).modules())


def test_linear_alone_starts_as_torch_linear_does():
    """Outside an MLP (which re-initialises it), a Linear draws weight and bias uniformly in +-1/sqrt(in_features)."""
    torch.manual_seed(0)
    layer = mlp.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    for values in (layer.weight.detach(), layer.bias.detach()):
        assert values.abs().max() <= bound and values.min() < -0.9 * bound and values.max() > 0.9 * bound
    assert layer.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)  # a uniform's spread
    assert (layer.in_features, layer.out_features) == (400, 300)
    assert repr(layer) == "Linear(in_features=400, out_features=300)"


def test_mlp_structure_and_parameter_count():
    model = mlp.MLP(**MLP_CONFIG)
    assert n_params(model) == 3_709_194
    assert (model.input_size, model.hidden_sizes, model.num_classes, model.activation) == (
        3072, [1024, 512, 64, 64], 10, "relu")
    assert isinstance(model.hidden_layers, nn.ModuleList) and len(model.hidden_layers) == 4
    assert [layer.weight.shape[0] for layer in model.hidden_layers] == [1024, 512, 64, 64]
    assert isinstance(model.output_layer, mlp.Linear) and model.output_layer.weight.shape == (10, 64)
    assert list(model.state_dict()) == [f"hidden_layers.{i}.{p}" for i in range(4) for p in ("weight", "bias")] + [
        "output_layer.weight", "output_layer.bias"]
    layers, output = model._build_layers(5, [4, 3], 2)
    assert isinstance(layers, nn.ModuleList) and [l.weight.shape for l in layers] == [(4, 5), (3, 4)]
    assert output.weight.shape == (2, 3)


def test_mlp_rejects_bad_arguments():
    with pytest.raises(AssertionError):
        mlp.MLP(10, [5], 2)
    with pytest.raises(AssertionError):
        mlp.MLP(10, [5, 5], 2, activation="gelu")
    with pytest.raises(ValueError, match="gelu"):  # named, not silently the identity
        mlp.MLP(10, [5, 5], 2).activation_fn("gelu", torch.randn(2, 5))


def test_mlp_glorot_normal_initialisation():
    torch.manual_seed(0)
    model = mlp.MLP(**MLP_CONFIG)
    for layer in list(model.hidden_layers) + [model.output_layer]:
        fan_out, fan_in = layer.weight.shape
        expected = math.sqrt(2.0 / (fan_in + fan_out))
        assert torch.all(layer.bias == 0)
        assert abs(layer.weight.std().item() - expected) / expected < 0.1 if layer.weight.numel() > 500 else True
        assert abs(layer.weight.mean().item()) < 3 * expected / math.sqrt(layer.weight.numel()) + 1e-6
    big = model.hidden_layers[0].weight
    # normal, not uniform: about 4.6% of a normal's mass lies beyond two standard deviations, none of a uniform's
    beyond = (big.abs() > 2 * big.std()).float().mean().item()
    assert 0.035 < beyond < 0.06


@pytest.mark.parametrize("activation,fn", [("relu", torch.relu), ("tanh", torch.tanh), ("sigmoid", torch.sigmoid)])
def test_mlp_forward_matches_reference(activation, fn):
    model = mlp.MLP(3 * 4 * 4, [6, 5, 4], 3, activation=activation)
    images = torch.randn(2, 3, 4, 4)
    x = images.flatten(1)
    for layer in model.hidden_layers:
        x = fn(x @ layer.weight.T + layer.bias)
    expected = x @ model.output_layer.weight.T + model.output_layer.bias
    torch.testing.assert_close(model(images), expected)
    torch.testing.assert_close(model(images.flatten(1)), expected)  # flat input works too
    # a channels-last batch (--channels_last on) is flattened in the same pixel order
    torch.testing.assert_close(model(images.to(memory_format=torch.channels_last)), expected)
    torch.testing.assert_close(model.activation_fn(activation, images), fn(images))


def test_mlp_forward_backward():
    forward_backward(mlp.MLP(**MLP_CONFIG), torch.randn(4, 3, 32, 32))


# ---------------------------------------------------------------- resnet18.py

def test_basic_block_structure():
    block = resnet18.BasicBlock(64, 64)
    assert isinstance(block.shortcut, nn.Sequential) and len(block.shortcut) == 0
    assert block.conv1.stride == (1, 1) and block.conv1.bias is None and block.conv1.padding == (1, 1)
    down = resnet18.BasicBlock(64, 128, stride=2)
    assert down.conv1.stride == (2, 2) and down.conv2.stride == (1, 1)
    assert isinstance(down.shortcut[0], nn.Conv2d) and down.shortcut[0].kernel_size == (1, 1)
    assert down.shortcut[0].stride == (2, 2) and down.shortcut[0].bias is None
    assert isinstance(down.shortcut[1], nn.BatchNorm2d)
    assert len(resnet18.BasicBlock(64, 128, stride=1).shortcut) == 2  # a channel change alone needs it too


@pytest.mark.parametrize("in_planes,planes,stride", [(8, 8, 1), (8, 16, 2)])
def test_basic_block_matches_reference(in_planes, planes, stride):
    torch.manual_seed(0)
    block = resnet18.BasicBlock(in_planes, planes, stride).eval()
    for bn in [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]:
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    x = torch.randn(2, in_planes, 8, 8)

    def bn(module, y):
        return (y - module.running_mean[:, None, None]) / torch.sqrt(module.running_var[:, None, None] + module.eps) \
            * module.weight[:, None, None] + module.bias[:, None, None]

    out = torch.relu(bn(block.bn1, F.conv2d(x, block.conv1.weight, stride=stride, padding=1)))
    out = bn(block.bn2, F.conv2d(out, block.conv2.weight, padding=1))
    shortcut = x if stride == 1 else bn(block.shortcut[1], F.conv2d(x, block.shortcut[0].weight, stride=stride))
    torch.testing.assert_close(block(x), torch.relu(out + shortcut), rtol=1e-4, atol=1e-5)


def test_resnet18_structure_and_parameter_count():
    model = resnet18.ResNet18()
    assert n_params(model) == 11_173_962
    assert model.conv1.weight.shape == (64, 3, 3, 3) and model.conv1.stride == (1, 1) and model.conv1.bias is None
    assert model.conv1.padding == (1, 1)  # without it the stem gives 30x30, and layer4 still ends at 4x4
    for name, (planes, stride) in zip(["layer1", "layer2", "layer3", "layer4"], [(64, 1), (128, 2), (256, 2), (512, 2)]):
        layer = getattr(model, name)
        assert isinstance(layer, nn.Sequential) and len(layer) == 2
        assert layer[0].conv1.out_channels == planes and layer[0].conv1.stride == (stride, stride)
        assert layer[1].conv1.stride == (1, 1)
    assert model.linear.in_features == 512 and model.linear.out_features == 10
    keys = list(model.state_dict())
    assert keys[:2] == ["conv1.weight", "bn1.weight"]
    assert "layer2.0.shortcut.0.weight" in keys and "layer2.0.shortcut.1.running_var" in keys
    assert "layer1.0.shortcut.0.weight" not in keys
    assert keys[-2:] == ["linear.weight", "linear.bias"]
    assert resnet18.ResNet18(num_classes=7).linear.out_features == 7


def test_resnet18_forward_matches_stages():
    torch.manual_seed(0)
    model = resnet18.ResNet18().eval()
    images = torch.randn(2, 3, 32, 32)
    x = torch.relu(model.bn1(model.conv1(images)))
    assert x.shape == (2, 64, 32, 32)
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    assert x.shape == (2, 512, 4, 4)
    torch.testing.assert_close(model(images), model.linear(x.mean(dim=(2, 3))), rtol=1e-4, atol=1e-5)


def test_resnet18_forward_backward():
    forward_backward(resnet18.ResNet18(), torch.randn(2, 3, 32, 32))


def test_resnet18_visualize(tmp_path, monkeypatch):
    saved = _figures_saved(monkeypatch)
    torch.manual_seed(0)
    model = resnet18.ResNet18()
    logdir = tmp_path / "new" / "run"  # visualize makes the folder it is given
    paths = model.visualize(str(logdir))
    names = sorted(os.listdir(logdir))
    assert names == ["resnet18_kernels_gray.png", "resnet18_kernels_rgb.png"]
    assert sorted(os.path.basename(path) for path in paths) == names
    for path in paths:
        assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    kernels = model.conv1.weight.detach()  # [64, 3, 3, 3]

    def normalised(values):
        return ((values - values.min()) / (values.max() - values.min())).numpy()
    for name, expected in (("resnet18_kernels_rgb.png", lambda k: normalised(kernels[k].permute(1, 2, 0))),
                           ("resnet18_kernels_gray.png", lambda k: normalised(kernels[k].mean(dim=0)))):
        axes = saved[name].axes
        assert len(axes) == 64 and len({round(ax.get_position().x0, 4) for ax in axes}) == 8, name  # 8 x 8
        for k, ax in enumerate(axes):  # kernel k in row k // 8, column k % 8, on the full [0, 1] range
            (image,) = ax.get_images()
            assert image.get_clim() == (0.0, 1.0)
            assert name.endswith("rgb.png") or image.get_cmap().name == "gray"  # an RGB image ignores the map
            torch.testing.assert_close(torch.from_numpy(image.get_array().data).float(),
                                       torch.from_numpy(expected(k)), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- mlpmixer.py

def test_patch_embed():
    embed = mlpmixer.PatchEmbed(32, 4, 3, 16)
    assert (embed.img_size, embed.patch_size, embed.grid_size, embed.num_patches) == (32, 4, 8, 64)
    assert embed.proj.kernel_size == (4, 4) and embed.proj.stride == (4, 4)
    x = torch.randn(2, 3, 32, 32)
    out = embed(x)
    assert out.shape == (2, 64, 16)
    # patch (row 1, column 2) is token 1 * 8 + 2
    patch = x[:, :, 4:8, 8:12]
    expected = torch.einsum("bchw,ochw->bo", patch, embed.proj.weight) + embed.proj.bias
    torch.testing.assert_close(out[:, 10], expected, rtol=1e-4, atol=1e-5)
    for height, width in ((28, 28), (32, 28), (28, 32)):
        with pytest.raises(AssertionError):
            embed(torch.randn(1, 3, height, width))


def test_mixer_block_matches_reference():
    torch.manual_seed(0)
    block = mlpmixer.MixerBlock(dim=8, seq_len=6).eval()
    assert block.mlp_tokens.fc1.weight.shape == (4, 6) and block.mlp_channels.fc1.weight.shape == (32, 8)
    assert block.norm1.eps == 1e-6 and block.norm2.eps == 1e-6
    assert isinstance(block.mlp_tokens.act, nn.GELU)
    for activation, layer in (("relu", nn.ReLU), ("gelu", nn.GELU)):  # both MLPs of every block of the model
        model = mlpmixer.MLPMixer(10, 32, 8, 16, 2, activation=activation)
        assert all(isinstance(mixing.act, layer) for mixer_block in model.blocks
                   for mixing in (mixer_block.mlp_tokens, mixer_block.mlp_channels)), activation
    x = torch.randn(2, 6, 8)

    def mlp_ref(m, y):
        return F.linear(F.gelu(F.linear(y, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)

    y = x + mlp_ref(block.mlp_tokens, F.layer_norm(x, (8,), block.norm1.weight, block.norm1.bias, 1e-6)
                    .transpose(1, 2)).transpose(1, 2)
    y = y + mlp_ref(block.mlp_channels, F.layer_norm(y, (8,), block.norm2.weight, block.norm2.bias, 1e-6))
    torch.testing.assert_close(block(x), y, rtol=1e-4, atol=1e-5)


def test_mixer_mlp_drops_after_its_activation_and_after_its_output_only_in_training():
    token_mlp = mlpmixer.Mlp(8, 32, drop=0.5)
    assert (token_mlp.fc1.in_features, token_mlp.fc1.out_features, token_mlp.fc2.out_features) == (8, 32, 8)
    assert isinstance(token_mlp.act, nn.GELU) and token_mlp.drop1.p == token_mlp.drop2.p == 0.5
    x = torch.randn(4, 5, 8)
    torch.manual_seed(0)
    out = token_mlp(x)
    torch.manual_seed(0)  # the same dropout masks, drawn in the same order
    torch.testing.assert_close(out, token_mlp.drop2(token_mlp.fc2(token_mlp.drop1(token_mlp.act(token_mlp.fc1(x))))))
    assert not torch.allclose(out, token_mlp.fc2(token_mlp.act(token_mlp.fc1(x))))
    torch.testing.assert_close(token_mlp.eval()(x), token_mlp.fc2(token_mlp.act(token_mlp.fc1(x))))


def test_mixer_drop_path_only_in_training():
    block = mlpmixer.MixerBlock(8, 6, drop_path=0.5)
    x = torch.randn(64, 6, 8)
    block.eval()
    first = block(x)
    torch.testing.assert_close(block(x), first)
    block.train()
    torch.manual_seed(0)
    assert block(x).shape == x.shape and not torch.allclose(block(x), first)
    assert list(block.state_dict()) == list(mlpmixer.MixerBlock(8, 6).state_dict())
    # each sample's branch is kept whole, scaled by 1 / keep so that its expectation is unchanged, or dropped
    drop_path = block.drop_path
    branch = torch.ones(4000, 6, 8)
    torch.manual_seed(0)
    out = drop_path(branch)
    assert out.shape == branch.shape
    per_sample = out.reshape(4000, -1)
    assert ((per_sample == 0).all(dim=1) | (per_sample == 2.0).all(dim=1)).all()
    assert (per_sample[:, 0] == 2.0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert drop_path.eval()(branch) is branch


def test_mlpmixer_structure_and_parameter_count():
    model = mlpmixer.MLPMixer(**MIXER_CONFIG)
    assert n_params(model) == 2_188_298
    assert model.num_classes == 10 and len(model.blocks) == 4 and isinstance(model.blocks, nn.Sequential)
    assert model.patchemb.num_patches == 64 and model.norm.normalized_shape == (256,)
    assert model.head.weight.shape == (10, 256)
    keys = list(model.state_dict())
    assert keys[:2] == ["patchemb.proj.weight", "patchemb.proj.bias"]
    assert keys[2:12] == [f"blocks.0.{k}" for k in ("norm1.weight", "norm1.bias", "mlp_tokens.fc1.weight",
                                                      "mlp_tokens.fc1.bias", "mlp_tokens.fc2.weight", "mlp_tokens.fc2.bias",
                                                      "norm2.weight", "norm2.bias", "mlp_channels.fc1.weight",
                                                      "mlp_channels.fc1.bias")]
    assert keys[-4:] == ["norm.weight", "norm.bias", "head.weight", "head.bias"]
    assert model.norm.eps == 1e-5  # the template's plain nn.LayerNorm(embed_dim); the blocks' norms take 1e-6
    dropping = mlpmixer.MLPMixer(**{**MIXER_CONFIG, "drop_rate": 0.2})
    assert {module.p for block in dropping.blocks for module in block.modules() if isinstance(module, nn.Dropout)} \
        == {0.2}


def test_mlpmixer_initialisation():
    torch.manual_seed(0)
    model = mlpmixer.MLPMixer(**MIXER_CONFIG)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            fan_out, fan_in = module.weight.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.9 * bound
            assert torch.all(module.bias == 0)
        elif isinstance(module, nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    conv = model.patchemb.proj.weight
    expected_std = math.sqrt(2.0 / (conv.shape[1] * conv.shape[2] * conv.shape[3]))
    assert abs(conv.std().item() - expected_std) / expected_std < 0.05
    # normal, not uniform: 8% of a normal's draws lie beyond the largest value of a uniform of that std
    assert (conv.abs() > math.sqrt(3) * expected_std).float().mean() > 0.05
    assert torch.all(model.patchemb.proj.bias == 0)


def test_mlpmixer_forward_matches_parts():
    torch.manual_seed(0)
    model = mlpmixer.MLPMixer(10, 32, 8, 16, 2).eval()
    images = torch.randn(3, 3, 32, 32)
    tokens = model.norm(model.blocks(model.patchemb(images)))
    torch.testing.assert_close(model(images), model.head(tokens.mean(dim=1)))


@pytest.mark.parametrize("patch_size", [1, 2, 4, 8, 16, 32])  # every size the patch study may run
def test_mlpmixer_forward_backward(patch_size):
    forward_backward(mlpmixer.MLPMixer(10, 32, patch_size, 32, 2, drop_rate=0.1), torch.randn(2, 3, 32, 32))


def test_mlpmixer_visualize(tmp_path):
    model = mlpmixer.MLPMixer(**MIXER_CONFIG)
    (path,) = model.visualize(str(tmp_path))
    assert os.listdir(tmp_path) == ["mlpmixer_token_mixing.png"]
    assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    order = mlpmixer._paired_frequency_order(model.blocks[0].mlp_tokens.fc1.weight.detach().numpy(), 8)
    assert sorted(order) == list(range(128))  # every unit drawn once
    # each pair's partner is the unit most opposite to it among those left: pairs correlate negatively
    w = model.blocks[0].mlp_tokens.fc1.weight.detach()
    w = w - w.mean(dim=1, keepdim=True)
    first, second = w[order[0]], w[order[1]]
    assert F.cosine_similarity(first, second, dim=0) < 0


def _token_mixing_units_drawn(figure):
    """The images a token-mixing figure draws, in its grid's order, each checked for its symmetric red-blue scale."""
    units = []
    for ax in figure.axes:
        for image in ax.get_images():
            values = torch.from_numpy(image.get_array().data).float()
            assert image.get_cmap().name == "RdBu_r" and image.get_clim() == pytest.approx(
                (-values.abs().max().item(), values.abs().max().item()))
            units.append(values)
    return units


def test_mlpmixer_visualize_draws_each_unit_over_the_patch_grid_in_pairs_from_low_to_high_frequency(
        tmp_path, monkeypatch):
    saved = _figures_saved(monkeypatch)
    model = mlpmixer.MLPMixer(10, 32, 4, 8, 1)  # 8x8 patches; 0.5 x 8 = 4 token-mixing units
    column = torch.arange(8.0)
    cos = {k: torch.cos(2 * math.pi * k * column / 8).expand(8, 8) for k in (1, 3)}  # [row, column] over patches
    units = torch.stack([cos[3] - cos[1] / 2, cos[3] - cos[1], cos[1], -cos[1]])  # [unit, 8, 8]
    with torch.no_grad():
        model.blocks[0].mlp_tokens.fc1.weight.copy_(units.reshape(4, 64))  # patch (r, c) is token 8 r + c
    model.visualize(str(tmp_path / "new"))
    drawn = _token_mixing_units_drawn(saved["mlpmixer_token_mixing.png"])
    # units are paired from the lowest frequency up: unit 2 (cos 1) with its opposite, unit 3, then the two left.
    # Taken in the weights' order instead, unit 0 would have paired with unit 2, its most opposite.
    expected = [units[2], units[3], units[1], units[0]]
    assert len(drawn) == 4 and all(torch.allclose(d, e, atol=1e-6) for d, e in zip(drawn, expected)), drawn


@pytest.mark.parametrize("patch_size", [1, 32])  # the largest patch grid (32x32) and the smallest (1x1)
def test_mlpmixer_visualize_at_the_extreme_patch_sizes(tmp_path, monkeypatch, patch_size):
    saved = _figures_saved(monkeypatch)
    model = mlpmixer.MLPMixer(10, 32, patch_size, 32, 2)
    (path,) = model.visualize(str(tmp_path))
    assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    grid = 32 // patch_size
    weights = model.blocks[0].mlp_tokens.fc1.weight.detach()  # [16, grid * grid]
    drawn = _token_mixing_units_drawn(saved["mlpmixer_token_mixing.png"])
    assert [tuple(unit.shape) for unit in drawn] == [(grid, grid)] * 16
    assert sorted(map(tuple, torch.stack(drawn).reshape(16, -1).tolist())) == sorted(map(tuple, weights.tolist()))



def _plane_wave(rows, columns):
    """``cos`` over the 8x8 patch grid with ``rows`` and ``columns`` periods: one spatial frequency."""
    r, c = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    return torch.cos(2 * math.pi * (rows * r + columns * c) / 8)


def test_token_mixing_pairs_are_ordered_by_the_power_weighted_frequency_of_their_zero_mean_patterns():
    # Frequencies (cycles per patch) of the power spectrum's mean: mixed_low 0.294 (weighted by amplitude it would be
    # 0.273, by power cubed 0.313) lies above plain_low's sqrt(5)/8 = 0.280; mixed_high 0.345 (0.307, 0.363) lies
    # below plain_high's sqrt(8)/8 = 0.354, whose offset of 3 is no frequency: taken as one, plain_high would go first.
    mixed_low = _plane_wave(0, 1) + 1.45 * _plane_wave(0, 3)
    mixed_high = _plane_wave(0, 1) + 2.7 * _plane_wave(0, 3)
    plain_low, plain_high = _plane_wave(2, 1), _plane_wave(2, 2) + 3
    units = torch.stack([mixed_low, -mixed_low, plain_low, -plain_low,
                         mixed_high, -mixed_high, plain_high, -plain_high]).reshape(8, 64)
    assert mlpmixer._paired_frequency_order(units.numpy(), 8) == [2, 3, 0, 1, 4, 5, 6, 7]
    # A pair goes by its mean: unit 0 (0.125) is the lowest, but its partner, unit 1 (0.47), puts the pair after the
    # pair at 0.25.
    low, middle, high = _plane_wave(0, 1), _plane_wave(2, 0), _plane_wave(4, 0)
    units = torch.stack([low, -0.3 * low + high, middle, -middle]).reshape(4, 64)
    assert mlpmixer._paired_frequency_order(units.numpy(), 8) == [2, 3, 0, 1]


def test_token_mixing_partners_are_the_most_negatively_correlated_whatever_their_offset_and_scale():
    wave, other, high = _plane_wave(0, 1), _plane_wave(1, 0), _plane_wave(3, 0)
    # Unit 0 pairs with unit 1, its exact opposite once offsets are removed; by raw cosine it would pair with
    # unit 2 (-0.97 against +0.89), by raw dot product with unit 2 in the second case (-64 against -32).
    offset = torch.stack([wave + 3, -wave + 3, -wave / 2 + other - 3, high])
    scaled = torch.stack([wave, -wave, -2 * wave + other, high])
    for units in (offset, scaled):
        assert mlpmixer._paired_frequency_order(units.reshape(4, 64).numpy(), 8) == [0, 1, 2, 3]
    # an odd number of units leaves the last one alone, drawn once, not paired with itself
    assert sorted(mlpmixer._paired_frequency_order(offset[:3].reshape(3, 64).numpy(), 8)) == [0, 1, 2]

# ---------------------------------------------------------------- utils.py

def test_cross_entropy_matches_builtin_values_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(16, 10, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 10, (16,))
    ours = utils.cross_entropy_loss(logits, labels)
    assert ours.dim() == 0
    (grad,) = torch.autograd.grad(ours, logits)
    reference = F.cross_entropy(logits, labels)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(grad, reference_grad)


def test_cross_entropy_is_stable_for_large_logits():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0], [1e4, 1e4, -1e4]], requires_grad=True)
    labels = torch.tensor([1, 1, 0])
    loss = utils.cross_entropy_loss(logits, labels)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, torch.tensor((2e4 + 0.0 + math.log(2)) / 3))
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    ref = logits.detach().clone().requires_grad_()
    F.cross_entropy(ref, labels).backward()
    torch.testing.assert_close(logits.grad, ref.grad)


def test_cross_entropy_does_not_use_the_builtins(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("cross_entropy_loss called a built-in cross-entropy")
    monkeypatch.setattr(F, "cross_entropy", forbidden)
    monkeypatch.setattr(nn, "CrossEntropyLoss", forbidden)
    monkeypatch.setattr(F, "nll_loss", forbidden)
    assert torch.isfinite(utils.cross_entropy_loss(torch.randn(4, 10), torch.tensor([0, 1, 2, 3])))
    source = pathlib.Path(ROOT, "utils.py").read_text()
    assert "CrossEntropyLoss" not in source.replace("torch.nn.CrossEntropyLoss` or", "")
    assert "F.cross_entropy" not in source and "functional.cross_entropy" not in source


def test_cross_entropy_in_half_precision_is_computed_in_float32():
    logits = torch.randn(8, 10).to(torch.bfloat16)
    labels = torch.randint(0, 10, (8,))
    loss = utils.cross_entropy_loss(logits, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, F.cross_entropy(logits.float(), labels))


def test_compute_accuracy():
    logits = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert utils.compute_accuracy(logits, torch.tensor([1, 0, 0, 0])).item() == pytest.approx(0.75)


def test_to_device():
    tensor = torch.ones(2)
    assert utils.to_device(tensor, "cpu").device.type == "cpu"
    moved = utils.to_device({"a": tensor, "b": tensor}, torch.device("cpu"))
    assert set(moved) == {"a", "b"}
    images, labels = utils.to_device([tensor, tensor.long()], "cpu")
    assert labels.dtype == torch.long
    for other in ("not a tensor", (tensor, tensor)):  # only a list, as the template's
        with pytest.raises(NotImplementedError):
            utils.to_device(other, "cpu")


def test_seed_experiment_makes_runs_repeat():
    utils.seed_experiment(3)
    first = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    utils.seed_experiment(3)
    second = (torch.rand(3), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(first[0], second[0]) and first[1:] == second[1:]


def test_generate_plots(tmp_path, monkeypatch):
    logs = {  # tanh diverged in its second epoch: results.json holds null where the loss was not finite
        "relu": {"train_losses": [2.0, 1.5, 1.2], "valid_losses": [2.1, 1.6, 1.3], "train_accs": [0.3, 0.4, 0.5],
                 "valid_accs": [0.28, 0.38, 0.45], "test_loss": 1.3, "test_acc": 0.45},
        "tanh": {"train_losses": [1.9, None], "valid_losses": [2.2, None], "train_accs": [0.32, 0.1],
                 "valid_accs": [0.3, 0.1], "test_loss": None, "test_acc": None},
    }
    runs = []
    for name, results in logs.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps(results))
        runs.append(str(folder))
    saved = _figures_saved(monkeypatch)
    for _ in range(2):  # plotting again into the same folder replaces the figures
        saved.clear()
        utils.generate_plots(runs, ["relu", "tanh"], str(tmp_path / "plots"))
        assert sorted(os.listdir(tmp_path / "plots")) == ["train_accs.png", "train_losses.png", "valid_accs.png",
                                                          "valid_losses.png"]
    assert sorted(saved) == sorted(os.listdir(tmp_path / "plots"))
    for name, figure in saved.items():  # one line per run, in the legend under its name, its values by epoch
        key, (ax,) = name[:-len(".png")], figure.axes
        assert [text.get_text() for text in ax.get_legend().get_texts()] == ["relu", "tanh"], name
        assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1, 2, 3], [1, 2]], name
        split, quantity = key.split("_")  # the y axis says what it shows: "valid losses"
        assert split in ax.get_ylabel() and quantity[:-1] in ax.get_ylabel(), (name, ax.get_ylabel())
        for line, results in zip(ax.get_lines(), logs.values()):
            expected = [math.nan if value is None else value for value in results[key]]
            assert line.get_ydata().tolist() == pytest.approx(expected, nan_ok=True), name
        assert ax.get_xlabel() == "epochs"
