"""Model configs: reading and checking ``model_configs/*.json``, then building the model."""
import json
import os

from .errors import UserError

MODEL_NAMES = ("mlp", "resnet18", "mlpmixer")
IMAGE_SIZE = 32
IMAGE_FEATURES = 3 * IMAGE_SIZE * IMAGE_SIZE
NUM_CLASSES = 10
REQUIRED = object()
SHIPPED_CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_configs")


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_int(expected=None):
    def check(key, value):
        if not _positive_int(value):
            return f"must be a positive integer, got {value!r}"
        if expected is not None and value != expected:
            return f"must be {expected} for CIFAR-10 ({key} {value} does not fit the data)"
        return None
    return check


def _check_hidden_sizes(key, value):
    if not isinstance(value, list) or not all(_positive_int(v) for v in value):
        return f"must be a list of positive integers, got {value!r}"
    if len(value) < 2:
        return f"must list at least two hidden layer sizes (the template's MLP asserts it), got {value!r}"
    return None


def _check_choice(*choices):
    def check(key, value):
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}, got {value!r}"
    return check


def _check_drop_rate(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        return f"must be a number in [0, 1), got {value!r}"
    return None


def _check_patch_size(key, value):
    valid = [p for p in range(1, IMAGE_SIZE + 1) if IMAGE_SIZE % p == 0]
    if not _positive_int(value) or value not in valid:
        return f"must divide the image size {IMAGE_SIZE}: valid choices are {', '.join(map(str, valid))}, got {value!r}"
    return None


# key -> (check, default or REQUIRED), per model; the order is the constructor's
SCHEMAS = {
    "mlp": {
        "input_size": (_check_int(IMAGE_FEATURES), REQUIRED),
        "hidden_sizes": (_check_hidden_sizes, REQUIRED),
        "num_classes": (_check_int(NUM_CLASSES), REQUIRED),
        "activation": (_check_choice("relu", "tanh", "sigmoid"), "relu"),
    },
    "resnet18": {
        "num_classes": (_check_int(NUM_CLASSES), NUM_CLASSES),
    },
    "mlpmixer": {
        "num_classes": (_check_int(NUM_CLASSES), REQUIRED),
        "img_size": (_check_int(IMAGE_SIZE), REQUIRED),
        "patch_size": (_check_patch_size, REQUIRED),
        "embed_dim": (_check_int(), REQUIRED),
        "num_blocks": (_check_int(), REQUIRED),
        "drop_rate": (_check_drop_rate, 0.0),
        "activation": (_check_choice("gelu", "relu"), "gelu"),
    },
}


def validate_model_config(model, config, source="model config"):
    """Check ``config`` against the model's schema; return it with defaults filled in."""
    schema = SCHEMAS[model]
    if not isinstance(config, dict):
        raise UserError(f"{source}: expected a JSON object of {model} settings, got {type(config).__name__}")
    unknown = sorted(set(config) - set(schema))
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r} for --model {model}; valid keys: {', '.join(schema)}")
    resolved = {}
    for key, (check, default) in schema.items():
        if key not in config:
            if default is REQUIRED:
                raise UserError(f"{source}: missing key {key!r} for --model {model}; valid keys: {', '.join(schema)}")
            resolved[key] = default
            continue
        problem = check(key, config[key])
        if problem:
            raise UserError(f"{source}: key {key!r} {problem}")
        resolved[key] = config[key]
    return resolved


def shipped_config_path(model):
    """The package's config for ``model``, relative to the working directory when it lies below it."""
    path = os.path.join(SHIPPED_CONFIG_DIR, f"{model}.json")
    try:
        relative = os.path.relpath(path)
    except ValueError:  # on Windows, a working directory on another drive
        return path
    return path if relative.startswith(os.pardir) else relative


def load_model_config(path, model):
    """Read and validate a model config file; every problem becomes a one-line ``UserError``."""
    if os.path.isdir(path):
        raise UserError(f"--model_config {path} is a folder, not a model config file; pass --model_config "
                        f"{shipped_config_path(model)} (the package's config for --model {model})")
    # exists, not isfile: bash's process substitution, --model_config <(jq ... base.json), gives a pipe
    if not os.path.exists(path):
        raise UserError(f"model config not found: {path}; pass --model_config {shipped_config_path(model)} "
                        f"(the package's config for --model {model})")
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: also a file that Windows Notepad saved with a BOM
            text = f.read()
        if not text.strip():
            raise UserError(f"{path}: the model config is empty; pass --model_config {shipped_config_path(model)} "
                            f"(or copy it and edit the copy)")
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:  # UTF-16, as Windows PowerShell 5 redirects output with `>`
        encoding = " (UTF-16, by its first bytes)" if exc.object[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise UserError(f"{path}: the model config is not UTF-8 text{encoding}; save it as UTF-8 (or copy "
                        f"{shipped_config_path(model)} and edit it)") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the model config ({exc})") from None
    meant_for = _model_the_config_fits(config, model)
    if meant_for:
        raise UserError(f"{path} is a config for --model {meant_for}, not {model}; "
                        f"pass --model_config {shipped_config_path(model)}")
    return validate_model_config(model, config, source=path)


def _fits(config, model):
    """Whether ``config`` has every required key of ``model``'s schema and no other key."""
    schema = SCHEMAS[model]
    return {key for key, (_, default) in schema.items() if default is REQUIRED} <= set(config) <= set(schema)


def _model_the_config_fits(config, model):
    """Another model whose keys ``config`` has, when it does not have ``model``'s."""
    if not isinstance(config, dict) or _fits(config, model):
        return None
    return next((other for other in MODEL_NAMES if other != model and _fits(config, other)), None)


def build_model(model, config):
    """Instantiate the graded model class named ``model`` from a validated config."""
    if model == "mlp":
        from mlp import MLP
        return MLP(**config)
    if model == "resnet18":
        from resnet18 import ResNet18
        return ResNet18(**config)
    if model == "mlpmixer":
        from mlpmixer import MLPMixer
        return MLPMixer(**config)
    raise UserError(f"unknown model {model!r}; valid choices: {', '.join(MODEL_NAMES)}")


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())
