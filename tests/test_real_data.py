"""On the real CIFAR-10 (the JPEG copy in ../shared/data): skipped where that copy is absent."""
import json
import os

import main


def test_mlp_one_epoch_on_cpu_beats_35_percent(real_data_dir, tmp_path):
    logdir = str(tmp_path / "run")
    code = main.main(["--model", "mlp", "--model_config", "model_configs/mlp.json", "--epochs", "1",
                      "--device", "cpu", "--data_dir", real_data_dir, "--logdir", logdir, "--no_progress"])
    assert code == 0
    with open(os.path.join(logdir, "results.json")) as f:
        results = json.load(f)
    assert results["split"] == {"train": 45000, "valid": 5000, "test": 10000, "disjoint": True}
    assert results["test_acc"] > 0.35, results["test_acc"]
