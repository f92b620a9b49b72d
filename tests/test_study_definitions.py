"""The studies as data: each search space draws what it states and is described as it draws."""
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from studies.definitions import STUDIES, Dimension


def test_a_search_draws_each_setting_from_the_distribution_its_space_states():
    for name in ("resnet18_best", "mlpmixer_best"):
        study = STUDIES[name]
        drawn = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(20):
            trial = drawn.ask()
            settings = study.sample(trial, dict(study.fixed))
            for dimension in study.space:
                applies = not dimension.when or settings[dimension.when[0]] == dimension.when[1]
                assert (dimension.name in trial.distributions) == applies, dimension.name
                if not applies:
                    continue
                distribution, value = trial.distributions[dimension.name], settings[dimension.setting]
                if dimension.kind == "categorical":
                    assert isinstance(distribution, CategoricalDistribution) and value in dimension.bounds
                else:
                    kind = FloatDistribution if dimension.kind == "float" else IntDistribution
                    assert type(distribution) is kind and distribution.log == dimension.log
                    assert (distribution.low, distribution.high) == dimension.bounds
                    assert dimension.bounds[0] <= value <= dimension.bounds[1]


def test_a_dimension_on_a_log_scale_is_drawn_on_one_whatever_its_kind():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    for dimension in (Dimension("width", "int", (8, 512), log=True), Dimension("rate", "float", (1e-4, 1.0), log=True),
                      Dimension("depth", "int", (1, 12))):
        dimension.suggest(trial)
        assert trial.distributions[dimension.name].log == dimension.log, dimension.name


def test_the_search_space_is_described_as_it_is_drawn():
    described = {dimension.name: dimension.describe() for dimension in STUDIES["mlpmixer_best"].space}
    assert described["momentum_lr"] == "float in [0.01, 0.4], log scale (when optimizer = momentum)"
    assert described["label_smoothing"] == "float in [0, 0.2]"
    assert described["num_blocks"] == "int in [4, 12]"
    assert described["batch_size"] == "one of 128, 256, 512"
