"""The experiments of Problem 4, as data: three grids and two hyperparameter searches.

A *setting* is either a ``main.py`` flag (``lr``, ``optimizer``, ``epochs``...) or a key of the
model's JSON config (``activation``, ``patch_size``, ``embed_dim``...). Grids list the values of one
setting; searches list the distributions that Optuna's TPE sampler draws from. The report prints
these same objects, so what it states is what ran.
"""
from dataclasses import dataclass, field

from training.augmentation import AUGMENTATIONS, MIXES
from training.models import SCHEMAS
from training.optim import SCHEDULES


@dataclass(frozen=True)
class Axis:
    """One setting of a grid.

    Args:
        setting: the flag or model-config key that varies.
        values: the values run by default.
        choices: every value the setting may take on request (``--values``).
        at_least: how many of the choices Problem 4 asks to run; ``None``: every one of ``values``.
    """
    setting: str
    values: tuple
    choices: tuple
    at_least: int = None

    def __post_init__(self):
        assert set(self.values) <= set(self.choices), f"{self.setting}: default values outside the choices"


@dataclass(frozen=True)
class Dimension:
    """One setting of a search space.

    Args:
        setting: the flag or model-config key it sets.
        kind: ``categorical``, ``float`` or ``int``.
        bounds: the choices (categorical) or ``(low, high)``.
        log: draw on a log scale (float and int).
        when: ``(setting, value)``: drawn only when that setting took that value, else left at
            ``main.py``'s default.
        param: the Optuna parameter's name when it differs from the setting (a setting whose
            range depends on a condition needs one name per range).
    """
    setting: str
    kind: str
    bounds: tuple
    log: bool = False
    when: tuple = None
    param: str = None

    @property
    def name(self):
        return self.param or self.setting

    def suggest(self, trial):
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.bounds))
        if self.kind == "float":
            return trial.suggest_float(self.name, *self.bounds, log=self.log)
        return trial.suggest_int(self.name, *self.bounds, log=self.log)

    def describe(self):
        if self.kind == "categorical":
            text = "one of " + ", ".join(str(choice) for choice in self.bounds)
        else:
            text = f"{self.kind} in [{self.bounds[0]:g}, {self.bounds[1]:g}]" + (", log scale" if self.log else "")
        return text + (f" (when {self.when[0]} = {self.when[1]})" if self.when else "")


@dataclass(frozen=True)
class Study:
    """One experiment of Problem 4.

    Args:
        name: the study's name in the storage and its folder under ``--out``.
        model: ``mlp``, ``resnet18`` or ``mlpmixer``.
        question: what the study answers, for the report.
        fixed: settings every run of the study uses (flags or model-config keys).
        grid: the varied setting of a grid study.
        space: the search space of a search study.
        trials: the default number of search trials.
        visualize: the final run of a search writes the model's first-layer visualisation.
    """
    name: str
    model: str
    question: str
    fixed: dict = field(default_factory=dict)
    grid: Axis = None
    space: tuple = ()
    trials: int = 0
    visualize: bool = False

    @property
    def is_search(self):
        return bool(self.space)

    def sample(self, trial, given):
        """Draw a search trial's settings; settings in ``given`` are held, not searched."""
        settings = dict(given)
        for dimension in self.space:
            if dimension.setting in given:
                continue
            if dimension.when and settings.get(dimension.when[0]) != dimension.when[1]:
                continue
            settings[dimension.setting] = dimension.suggest(trial)
        return settings


def is_model_setting(model, setting):
    return setting in SCHEMAS[model]


def training_space(epochs):
    """What both searches tune: SGD with momentum or AdamW, each with its own learning-rate and
    weight-decay range (AdamW's decay is multiplied by the learning rate, so it needs larger values),
    the batch size, the number of epochs (from ``epochs``), the schedule and its warm-up, label smoothing,
    the training augmentation and batch mixing."""
    return (
        Dimension("optimizer", "categorical", ("momentum", "adamw")),
        Dimension("lr", "float", (0.01, 0.4), log=True, when=("optimizer", "momentum"), param="momentum_lr"),
        Dimension("weight_decay", "float", (1e-5, 2e-3), log=True, when=("optimizer", "momentum"),
                  param="momentum_weight_decay"),
        Dimension("lr", "float", (2e-4, 5e-3), log=True, when=("optimizer", "adamw"), param="adamw_lr"),
        Dimension("weight_decay", "float", (1e-3, 0.5), log=True, when=("optimizer", "adamw"),
                  param="adamw_weight_decay"),
        Dimension("batch_size", "categorical", (128, 256, 512)),
        Dimension("epochs", "categorical", epochs),
        Dimension("lr_schedule", "categorical", SCHEDULES),
        Dimension("warmup_fraction", "float", (0.0, 0.3), when=("lr_schedule", "cosine"), param="cosine_warmup"),
        Dimension("warmup_fraction", "float", (0.0, 0.3), when=("lr_schedule", "onecycle"),
                  param="onecycle_warmup"),
        Dimension("label_smoothing", "float", (0.0, 0.2)),
        Dimension("augment", "categorical", tuple(AUGMENTATIONS)),
        Dimension("mix", "categorical", MIXES),
    )


RESNET18_SPACE = training_space(epochs=(10, 20, 30, 40))
MLPMIXER_SPACE = training_space(epochs=(20, 40, 60, 100)) + (
    Dimension("embed_dim", "categorical", (128, 192, 256, 384, 512)),
    Dimension("num_blocks", "int", (4, 12)),
    Dimension("drop_rate", "float", (0.0, 0.3)),
)

STUDIES = {study.name: study for study in (
    Study("mlp_activation", "mlp", "Which activation trains the MLP best?",
          grid=Axis("activation", ("relu", "tanh", "sigmoid"), ("relu", "tanh", "sigmoid"))),
    Study("resnet18_lr", "resnet18", "How does Adam's learning rate affect ResNet18?", fixed={"optimizer": "adam"},
          grid=Axis("lr", (0.1, 0.01, 0.001, 0.0001, 0.00001), (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0003,
                                                                 0.0001, 0.00003, 0.00001, 0.000001))),
    Study("mlpmixer_patch", "mlpmixer", "How does the patch size affect the MLP-Mixer's accuracy, size and speed?",
          grid=Axis("patch_size", (2, 4, 8, 16), (1, 2, 4, 8, 16, 32), at_least=3)),
    Study("resnet18_best", "resnet18", "Which hyperparameters train ResNet18 best?", space=RESNET18_SPACE,
          trials=24, visualize=True),
    Study("mlpmixer_best", "mlpmixer", "Which hyperparameters train the MLP-Mixer with 4x4 patches best?",
          fixed={"patch_size": 4}, space=MLPMIXER_SPACE, trials=24, visualize=True),
)}
