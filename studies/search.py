"""How a search study draws and prunes its trials: Optuna's TPE sampler, seeded so that a search resumed or spread
over workers draws what it would have drawn uninterrupted, and a median pruner that compares a trial only with
trials of its own epoch budget."""
import statistics
import warnings
import zlib

import optuna
from optuna.trial import TrialState

PRUNE_FROM_EPOCH = 4  # a trial's first epochs (warm-up, the highest learning rates) say little of where it ends
PRUNE_AFTER_TRIALS = 5  # completed trials before any trial is pruned
PRUNE_PEERS = 2  # completed trials with a trial's number of epochs, whose median it is compared with
RANDOM_TRIALS = 8  # a search's first trials, drawn at random before TPE models the results


class SameBudgetMedianPruner(optuna.pruners.BasePruner):
    """The median stopping rule among trials that train for as many epochs.

    From epoch ``PRUNE_FROM_EPOCH`` on, once ``PRUNE_AFTER_TRIALS`` trials have completed, a trial stops when
    its best validation accuracy so far is below the median, at the same epoch, of the completed trials with
    its number of epochs (at least ``PRUNE_PEERS`` of them). Optuna's ``MedianPruner`` compares with every
    completed trial: under a decaying schedule a 10-epoch trial has annealed by epoch 10 while a 40-epoch one
    is still at its peak learning rate there, so long trials would be pruned for their budget, not their
    settings."""

    def prune(self, study, trial):
        epoch = trial.last_step
        if epoch is None or epoch < PRUNE_FROM_EPOCH:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < PRUNE_AFTER_TRIALS:
            return False
        budget = _epoch_budget(trial)
        peers = [peer.intermediate_values[epoch] for peer in completed
                 if _epoch_budget(peer) == budget and epoch in peer.intermediate_values]
        if len(peers) < PRUNE_PEERS:
            return False
        return max(trial.intermediate_values.values()) < statistics.median(peers)


def _epoch_budget(trial):
    return trial.user_attrs.get("settings", {}).get("epochs")


def search_sampler(study_name, seed, search_index):
    """The TPE sampler that draws the trial number ``search_index`` (0, 1...: its place among the search's trials,
    which a retry of an interrupted trial keeps) of the search ``study_name``, seeded by the three.

    So a search run again with the same flags draws the same trials, given the same results before them; a
    search resumed after an interruption draws what it would have drawn uninterrupted (a sampler seeded once per
    launch would start its random draws over, and repeat the first trials' settings); workers drawing side by
    side, each claiming its own place, never draw alike; and two searches whose spaces share settings (the
    optimizer, the learning rate...) do not explore the same points of them. Trials running elsewhere count as
    poor (constant liar), so that a worker explores away from them."""
    with warnings.catch_warnings():  # Optuna 4 marks constant_liar experimental; it is stable from Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=zlib.crc32(f"{study_name} {seed} {search_index}".encode()),
                                          n_startup_trials=RANDOM_TRIALS, constant_liar=True)
