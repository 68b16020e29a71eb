"""Hyper-parameter search on validation NDCG@10: a grid (``select``, the benchmark runner's ``--select``)
or an Optuna study (``tune``, ``llmrec tune``). Both score a config by the same ``valid_ndcg10``: the model
fitted on the split's training part, every validation user's next item ranked against all items. The test
split is never read.

``tune`` searches the model's ``Config.SEARCH_SPACE`` (data beside each config, checked by
``config.check_space``) with Optuna's TPE sampler, the model's defaults tried first. A model that
``reports_validation`` (the torch models) reports each epoch's validation NDCG@10 and a median pruner stops
trials that fall below the median of earlier trials at the same epoch; other models' trials just run. The
study lives in SQLite storage, so a second call with the same study name continues it: ``trials`` is the
total wanted, and the trials already there count. With ``out``, the best config is trained to a checkpoint
whose model card carries the study's summary.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import models
from .config import Checked, check_space, to_dict
from .data import Dataset
from .errors import ConfigError, LLMRecError
from .split import Split

METRIC = "validation NDCG@10 (every validation user, all items ranked, training history excluded)"


def valid_ndcg10(model, data: Dataset, split: Split, users: np.ndarray | None = None) -> float:
    """A fitted model's validation NDCG@10: the one score both searches choose by."""
    from .evaluate import evaluate
    return evaluate(model, split, data.n_users, data.n_items, ks=(10,), stage="valid", users=users,
                    progress=False).metrics["NDCG@10"]


def select(data: Dataset, split: Split, model: str, key: str, values: list, overrides: dict | None = None,
           users: np.ndarray | None = None) -> tuple[Any, dict[str, float]]:
    """Grid search over one key: fit ``model`` once per value and return (the value with the highest
    ``valid_ndcg10``, the first listed on a tie; {json value: score})."""
    tried: dict[str, float] = {}
    best, best_score = None, -math.inf
    for v in values:
        m = models.get(model, {**(overrides or {}), key: v})
        m.fit(data, split, progress=False)
        score = tried[json.dumps(v)] = valid_ndcg10(m, data, split, users)
        if score > best_score:
            best, best_score = v, score
    return best, tried


def search_space(model: str, space: dict | None = None) -> dict[str, tuple]:
    """The space to search for ``model``: ``space`` if given, else its ``Config.SEARCH_SPACE``; checked."""
    cls = models.get_class(model).Config
    declared = cls.SEARCH_SPACE if issubclass(cls, Checked) else {}  # plain configs declare none
    space = declared if space is None else space
    if not space:
        raise ConfigError(f"model {model!r} has no search space (its config declares no SEARCH_SPACE); "
                          "pass one")
    return check_space(cls, space)


def _inside(spec: tuple, value: Any) -> bool:
    return value in spec[1] if spec[0] == "choice" else spec[1] <= value <= spec[2]


def _suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    out = {}
    for key, spec in space.items():
        if spec[0] == "choice":
            out[key] = trial.suggest_categorical(key, list(spec[1]))
        elif spec[0] == "int":
            out[key] = trial.suggest_int(key, spec[1], spec[2], log=spec[3])
        else:
            out[key] = trial.suggest_float(key, spec[1], spec[2], log=spec[3])
    return out


def _open_study(storage: Path, name: str, space: dict, identity: dict, seed: int, pruner_startup: int):
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=name, storage=f"sqlite:///{storage.resolve()}", direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=pruner_startup, n_warmup_steps=0))
    saved = study.user_attrs
    want = {"space": json.loads(json.dumps(space)), **identity}
    if not saved:
        for k, v in want.items():
            study.set_user_attr(k, v)
    else:  # the fixed overrides (threads, budgets) may differ between calls; what is searched may not
        for k, v in want.items():
            if k != "overrides" and saved.get(k) != v:
                raise ConfigError(f"{storage}: study {name!r} was run with another {k} ({saved.get(k)!r}, now "
                                  f"{v!r}); name another study (--study-name) or file")
    return study


def summary(study, seconds: float = 0.0, new_trials: int = 0) -> dict:
    """What a study found: best params and value, and how many trials completed, were pruned or failed."""
    from optuna.trial import TrialState
    states = [t.state for t in study.trials]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = max(done, key=lambda t: (t.value, -t.number)) if done else None
    return {"study": study.study_name, "metric": METRIC, "direction": "maximize",
            "model": study.user_attrs.get("model"), "dataset": study.user_attrs.get("dataset"),
            "best_params": best.params if best else None,
            "best_value": round(best.value, 5) if best else None,
            "best_trial": best.number if best else None,
            "trials": len(states), "complete": len(done), "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL), "new_trials": new_trials,
            "space": study.user_attrs.get("space"), "seconds": round(seconds, 1),
            "values": [{"trial": t.number, "state": t.state.name.lower(), "params": t.params,
                        "value": None if t.value is None else round(t.value, 5),
                        "epochs_reported": len(t.intermediate_values)} for t in study.trials]}


def tune(data: Dataset, split: Split, model: str, *, trials: int = 20, max_minutes: float = 0.0,
         study: str | Path = "tune.db", study_name: str | None = None, out: str | Path | None = None,
         overrides: dict | None = None, space: dict | None = None, trial_minutes: float = 0.0,
         seed: int = 0, pruner_startup: int = 2, progress: bool = False) -> dict:
    """Search ``model``'s hyper-parameters on ``split``'s validation NDCG@10; returns ``summary``.

    trials: the study's total (trials already in the study count); max_minutes: this call's budget
    (0 = none), checked between trials, and a model with a ``max_minutes`` key has its training cut to
    what is left (or ``trial_minutes``, the smaller). study / study_name: the SQLite file and the study in
    it (default ``DATASET__MODEL``); a study is refused if it was run with another space, model, data set
    or overrides. overrides: fixed config keys (e.g. threads); space: instead of the config's
    SEARCH_SPACE. The defaults of the space's keys are the first trial. out: train the best config there
    (``pipeline.fit_card_save``) with the summary as the card's ``tuning``. pruner_startup: completed
    trials before pruning starts.
    """
    import optuna
    from optuna.trial import TrialState

    from . import pipeline
    cls = models.get_class(model).Config
    space = search_space(model, space)
    overrides = dict(overrides or {})
    base = models.get(model, overrides)  # a bad override is refused before anything runs
    if getattr(base.config, "workers", 1) != 1:
        raise ConfigError(f"{cls.__name__}.workers: a search trains each trial in this process; set workers=1")
    fixed = sorted(set(overrides) & set(space))
    if fixed:
        raise ConfigError(f"{cls.__name__}: {', '.join(map(repr, fixed))} both searched and fixed by --set")
    if trials < 1:
        raise ConfigError(f"trials must be at least 1, got {trials}")
    name = study_name or f"{data.name}__{model}"
    identity = {"model": model, "dataset": data.name, "n_items": data.n_items, "overrides": overrides}
    st = _open_study(Path(study), name, space, identity, seed, pruner_startup)
    before = sum(t.state != TrialState.WAITING for t in st.trials)
    defaults = {k: v for k, v in to_dict(base.config).items() if k in space and _inside(space[k], v)}
    if not st.trials and len(defaults) == len(space):  # the defaults first, when the space holds them
        st.enqueue_trial(defaults, user_attrs={"defaults": True})
    t0 = time.perf_counter()
    has_budget = "max_minutes" in {f.name for f in dataclasses.fields(cls)}

    def objective(trial) -> float:
        params = _suggest(trial, space)
        cfg = dict(overrides, **params)
        if has_budget:
            left = [m for m in (trial_minutes, max_minutes - (time.perf_counter() - t0) / 60 if max_minutes
                                else 0.0, cfg.get("max_minutes", 0.0)) if m > 0]
            if left:
                cfg["max_minutes"] = max(min(left), 0.05)
        m = models.get(model, cfg)
        if m.reports_validation:
            def report(epoch: int, score: float) -> None:
                trial.report(score, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"validation NDCG@10 {score:.4f} at epoch {epoch}")
            m.on_validation = report
        m.fit(data, split, progress=False)
        value = valid_ndcg10(m, data, split)
        if progress:
            print(f"tune: trial {trial.number} NDCG@10 {value:.4f} {params}", flush=True)
        return value

    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    todo = trials - sum(t.state in finished for t in st.trials)
    if todo > 0:
        st.optimize(objective, n_trials=todo, timeout=60.0 * max_minutes if max_minutes else None,
                    catch=(LLMRecError,))
    result = summary(st, time.perf_counter() - t0, len(st.trials) - before)
    if out is not None:
        if result["best_params"] is None:
            raise LLMRecError(f"study {name!r} has no completed trial: nothing to train to {out}")
        best = models.get(model, dict(overrides, **result["best_params"]))
        pipeline.fit_card_save(best, data, split, out, progress=progress,
                               measure=lambda m: {"tuning": {k: v for k, v in result.items() if k != "values"},
                                                  "valid_metrics": {"NDCG@10": valid_ndcg10(m, data, split)}})
        result["out"] = str(out)
    return result
