"""The optimizers and learning-rate schedules (training/optim.py): the template's four optimizers with its
hyperparameters, schedules, the tensor learning rate that a captured graph reads, and optimizer state resumed across
eager and graphed runs."""
import copy

import pytest
import torch

from training.optim import (OPTIMIZERS, LRSchedule, build_optimizer, load_optimizer_state, set_learning_rate,
                            unread_flags)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_optimizers_follow_the_template(optimizer):
    built = build_optimizer(optimizer, [torch.nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.8, weight_decay=0.01)
    template = {"sgd": lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01),
                "momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, weight_decay=0.01),
                "adam": lambda p: torch.optim.Adam(p, lr=0.1),  # no weight decay
                "adamw": lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.01)}[optimizer](
        [torch.nn.Parameter(torch.ones(2))])
    # every hyperparameter (nesterov, dampening, betas, eps...) as the template's call gives it; only how the
    # update is computed (one fused kernel, capturable) may differ
    implementation = {"params", "fused", "foreach", "capturable", "differentiable"}

    def hyperparameters(built_optimizer):
        return {key: value for key, value in built_optimizer.param_groups[0].items() if key not in implementation}
    assert type(built) is type(template) and hyperparameters(built) == hyperparameters(template)
    assert built.param_groups[0]["weight_decay"] == (0 if optimizer == "adam" else 0.01)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_flags_said_to_be_unused_are_those_the_optimizer_is_built_without(optimizer):
    def hyperparameters(**changed):
        built = build_optimizer(optimizer, [torch.nn.Parameter(torch.ones(2))],
                                **{"lr": 0.1, "momentum": 0.8, "weight_decay": 0.01, **changed})
        return {key: value for key, value in built.param_groups[0].items() if key != "params"}
    read = {flag for flag, other in (("momentum", 0.5), ("weight_decay", 0.1))
            if hyperparameters(**{flag: other}) != hyperparameters()}
    unread = set(unread_flags({"optimizer": optimizer, "lr_schedule": "cosine"}))
    assert read.isdisjoint(unread) and read | unread == {"momentum", "weight_decay"}


def test_schedules():
    constant = LRSchedule("constant", 0.1, 100)
    assert [constant(s) for s in (0, 50, 99)] == [0.1, 0.1, 0.1]
    cosine = LRSchedule("cosine", 0.1, 100, warmup_fraction=0.2)
    assert cosine(0) == pytest.approx(0.1 / 20) and cosine(19) == pytest.approx(0.1)
    assert cosine(20) == pytest.approx(0.1) and cosine(60) == pytest.approx(0.05) and cosine(100) == pytest.approx(0)
    onecycle = LRSchedule("onecycle", 0.2, 10, warmup_fraction=0.5)
    assert [round(onecycle(s), 6) for s in range(10)] == [0.04, 0.08, 0.12, 0.16, 0.2, 0.2, 0.16, 0.12, 0.08, 0.04]
    assert LRSchedule("cosine", 0.1, 10, warmup_fraction=0.0)(0) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
def test_capturable_optimizer_reads_its_learning_rate_tensor_in_place(name):
    torch.manual_seed(0)
    plain_parameter = torch.nn.Parameter(torch.randn(5))
    graph_parameter = torch.nn.Parameter(plain_parameter.detach().clone())
    plain = build_optimizer(name, [plain_parameter], 0.1, 0.9, 0.01)
    graph = build_optimizer(name, [graph_parameter], 0.1, 0.9, 0.01, capturable=True)
    lr_tensor = graph.param_groups[0]["lr"]
    assert isinstance(lr_tensor, torch.Tensor) and not isinstance(plain.param_groups[0]["lr"], torch.Tensor)
    # Adam keeps a step counter, which a captured graph must find on the GPU; SGD has none and no such flag
    assert graph.param_groups[0].get("capturable", False) is (name in ("adam", "adamw"))
    for lr in (0.1, 0.05, 0.3):
        set_learning_rate(plain, lr)
        set_learning_rate(graph, lr)
        assert graph.param_groups[0]["lr"] is lr_tensor  # same storage: a replayed graph sees the new value
        for parameter in (plain_parameter, graph_parameter):
            parameter.grad = torch.sin(parameter.detach() * 3)
        plain.step()
        graph.step()
    torch.testing.assert_close(graph_parameter, plain_parameter)


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam", "adamw"])
@pytest.mark.parametrize("saved_capturable", [False, True], ids=["eager_to_graph", "graph_to_eager"])
def test_a_resumed_optimizer_keeps_how_this_run_built_it(name, saved_capturable):
    """A checkpoint made on a CPU or with --cuda_graph off, resumed with a graph, must leave a capturable
    optimizer (else the graph's capture fails), and the other way round; the updates stay the same."""
    torch.manual_seed(0)
    saved_parameter = torch.nn.Parameter(torch.randn(5))
    saving = build_optimizer(name, [saved_parameter], 0.1, 0.9, 0.01, capturable=saved_capturable)
    saved_parameter.grad = torch.sin(saved_parameter.detach() * 3)
    saving.step()
    resumed_parameter = torch.nn.Parameter(saved_parameter.detach().clone())
    resumed = build_optimizer(name, [resumed_parameter], 0.1, 0.9, 0.01, capturable=not saved_capturable)
    built = {key: value for key, value in resumed.param_groups[0].items() if key in ("capturable", "fused", "foreach")}
    load_optimizer_state(resumed, copy.deepcopy(saving.state_dict()))  # as from a file: no shared tensors
    group = resumed.param_groups[0]
    assert {key: group[key] for key in built} == built
    assert isinstance(group["lr"], torch.Tensor) is (not saved_capturable) and float(group["lr"]) == pytest.approx(0.1)
    for parameter in (saved_parameter, resumed_parameter):
        parameter.grad = torch.cos(parameter.detach() * 2)
    saving.step()
    resumed.step()
    torch.testing.assert_close(resumed_parameter, saved_parameter)
