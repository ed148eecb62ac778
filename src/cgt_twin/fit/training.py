"""Training the neural residual of a hybrid twin (optax), with checkpoints, early stopping and a progress bar.

`train_hybrid` minimises the negative log-likelihood of the training batches (noise held at the values of the
mechanistic stage, `FitResult.noise`) over the residual's weights — and, with ``joint=True``, over the log of chosen
mechanistic parameters too — with AdamW (weight decay), global-norm gradient clipping and early stopping on
validation batches. Every step is one compiled, vmapped solve of all training batches. Long fits write a checkpoint
every few steps and resume from it: a fit whose process is killed ends where an uninterrupted one ends.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..data.campaign import Campaign
from ..data.errors import CampaignValidationError, Problem
from ..hybrid import HybridKinetics
from ..models.twin import Twin
from ..simulate import SolverSettings, prepare
from .checkpoint import fingerprint, load_checkpoint, save_checkpoint
from .likelihood import negative_log_likelihood
from .observations import align, observable_variables
from .prediction import predict_observed

__all__ = ["TrainConfig", "TrainResult", "train_hybrid", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the batches concerned."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        variables: measured variables in the loss (default: every measured variable the model predicts).
        validation: batches held out of the gradient, used for early stopping.
        steps: maximum optimiser steps (full-batch).
        learning_rate, weight_decay, clip_norm: AdamW and gradient clipping.
        patience: stop when the validation loss has not improved for this many steps (no validation: never).
        joint: also train the log of `parameters` (the mechanistic ones), not only the network.
        parameters: mechanistic parameters trained when `joint`.
        checkpoint_dir: where to write checkpoints (None: no checkpoints); an existing checkpoint of the same fit is
            resumed.
        checkpoint_every: steps between checkpoints.
        progress: show a progress bar (terminal or notebook).
        solver: solver settings inside the fit.
    """

    variables: tuple[str, ...] | None = None
    validation: tuple[str, ...] = ()
    steps: int = 300
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    clip_norm: float = 1.0
    patience: int = 50
    joint: bool = False
    parameters: tuple[str, ...] = ()
    checkpoint_dir: str | None = None
    checkpoint_every: int = 10
    progress: bool = True
    solver: SolverSettings = SolverSettings()


@dataclasses.dataclass
class TrainResult:
    """The trained twin and its loss history (one dict per step: step, train, validation, seconds)."""

    twin: Twin
    history: list[dict]
    best_step: int
    stopped: str
    seconds: float
    resumed_from: int | None


def _trainable(twin: Twin, parameters) -> dict:
    return {"residual": twin.kinetics.residual,
            "log_params": {p: jnp.log(jnp.asarray(twin.params[p], dtype=jnp.float64)) for p in parameters}}


def train_hybrid(twin: Twin, campaign: Campaign, noise: Mapping[str, tuple[float, float]],
                 config: TrainConfig | None = None, *,
                 batch_weights: Mapping[str, float] | None = None,
                 initial_states: Mapping[str, Mapping[str, float]] | None = None) -> TrainResult:
    """Trains the residual of a hybrid `twin` (see the module docstring).

    Args:
        twin: a twin whose kinetics is a `HybridKinetics` (usually the mechanistic fit wrapped by `hybrid`).
        campaign: the data; batches whose feeds are unknown are skipped.
        noise: variable -> (σ_abs, σ_rel), e.g. `FitResult.noise` of the mechanistic stage.
        config: the settings.
        batch_weights: training batch -> weight of its negative log-likelihood in the loss (default 1 each). A
            bootstrap resample (`cgt_twin.bayes.train_ensemble`) gives each batch the number of times it was drawn;
            a weight of 0 leaves a batch out of the loss while it is still solved, so every resample of a campaign
            has the same shapes and reuses one compilation. Validation losses are not weighted.
        initial_states: batch -> state -> initial value (canonical units) overriding the measured starts (e.g.
            initial states known better than the first samples). `cgt_twin.fit.calibrate` does not pass the
            mechanistic stage's fitted ones: they absorb part of the model error the network should learn (see
            there).

    Raises:
        CampaignValidationError: for bad input (before compiling).
        NonFiniteLossError: if the loss becomes non-finite (the last good checkpoint is kept).
    """
    config = config or TrainConfig()
    start = time.perf_counter()
    kinetics = twin.kinetics
    problems = []
    if not isinstance(kinetics, HybridKinetics):
        problems.append(Problem("twin", "the twin has no neural residual; wrap its kinetics with "
                                        "cgt_twin.hybrid.hybrid(...) first"))
    predicted = observable_variables(kinetics, twin.params)
    variables = list(config.variables) if config.variables is not None else \
        [v for v in campaign.variables if v in predicted and v in noise]
    problems += [Problem("variables", f"the model cannot predict {v!r}", column=v) for v in variables
                 if v not in predicted]
    problems += [Problem("noise", f"no noise level for {v!r} (give FitResult.noise)", column=v) for v in variables
                 if v not in noise]
    unknown = [b for b in config.validation if b not in campaign.batches]
    if unknown:
        problems.append(Problem("validation", f"unknown batches {unknown}"))
    train_batches = [b for b in campaign.batches if b not in config.validation and campaign.protocols[b].feeds_known]
    if not train_batches:
        problems.append(Problem("campaign", "no training batches left"))
    problems += [Problem("parameters", f"unknown parameter {p!r}") for p in config.parameters
                 if p not in twin.params]
    problems += [Problem("initial_states", f"{b!r} is not a batch of the campaign", batch=str(b))
                 for b in (initial_states or {}) if b not in campaign.batches]
    weights = dict(batch_weights or {})
    problems += [Problem("batch_weights", f"{b!r} is not a training batch", batch=str(b)) for b in weights
                 if b not in train_batches]
    bad_weights = [b for b, w in weights.items() if not _valid_weight(w)]
    problems += [Problem("batch_weights", f"weight must be a finite number >= 0, got {weights[b]!r}", batch=str(b))
                 for b in bad_weights]
    if weights and train_batches and not bad_weights and not any(float(weights.get(b, 1.0)) > 0
                                                                 for b in train_batches):
        problems.append(Problem("batch_weights", "every training batch has weight 0"))
    if problems:
        raise CampaignValidationError(problems, header="cannot train")

    parameters = tuple(config.parameters) if config.joint else ()
    problems_data = {}
    for name, batches in {"train": train_batches, "validation": list(config.validation)}.items():
        if batches:
            prepared = prepare(twin, campaign, batches=batches, initial_states=initial_states)
            data = align(campaign, prepared, variables)
            problems_data[name] = {"encoded": prepared.encoded, "values": data.values, "mask": data.mask,
                                   "censored": data.censored}
    base_params = dict(twin.params)
    fixed = {"params": {k: jnp.asarray(v, dtype=jnp.float64) for k, v in base_params.items()},
             "sigma_abs": jnp.asarray([noise[v][0] for v in variables])[:, None, None, None],
             "sigma_rel": jnp.asarray([noise[v][1] for v in variables])[:, None, None, None],
             "weights": jnp.asarray([float(weights.get(b, 1.0)) for b in train_batches], dtype=jnp.float64)}
    static = (config.solver, tuple(variables))
    optimiser = _optimiser(float(config.learning_rate), float(config.weight_decay), float(config.clip_norm))
    trainable = _trainable(twin, parameters)
    opt_state = optimiser.init(eqx.filter(trainable, eqx.is_array))

    def step(trainable, opt_state):
        return _train_step(kinetics, trainable, opt_state, fixed, problems_data["train"], static, optimiser)

    def validation_loss(trainable):
        return jnp.sum(_batch_losses(kinetics, trainable, fixed, problems_data["validation"], static))

    spec = dataclasses.asdict(kinetics.spec)
    if not kinetics.spec.covariates:  # as before covariates existed: older checkpoints still resume
        spec = {k: v for k, v in spec.items() if k not in ("covariates", "covariate_kinds")}
    else:
        spec["encoding"] = kinetics.encoding.to_json()
    key = fingerprint({"variables": variables, "train": train_batches, "validation": list(config.validation),
                       "config": {k: v for k, v in dataclasses.asdict(config).items()
                                  if k not in ("steps", "progress", "checkpoint_dir", "checkpoint_every")},
                       "spec": spec, "params": {k: float(v) for k, v in base_params.items()},
                       **({"batch_weights": {b: float(weights[b]) for b in sorted(weights)}} if weights else {}),
                       **({"initial_states": {b: {k: float(v) for k, v in sorted(initial_states[b].items())}
                                              for b in sorted(initial_states)}} if initial_states else {})})
    history: list[dict] = []
    first_step, resumed = 0, None
    state = {"trainable": trainable, "opt_state": opt_state, "best": trainable}
    if config.checkpoint_dir:
        loaded = load_checkpoint(config.checkpoint_dir, state, key)
        if loaded is not None:
            state, first_step, history = loaded
            resumed = first_step
    trainable, opt_state, best = state["trainable"], state["opt_state"], state["best"]
    best_value = min((h["validation"] if "validation" in problems_data else h["train"] for h in history),
                     default=math.inf)
    best_step = next((h["step"] for h in history if (h["validation"] if "validation" in problems_data
                                                     else h["train"]) == best_value), 0)
    stopped = "maximum steps"
    bar = _progress(config, first_step)
    try:
        for index in range(first_step, config.steps):
            new_trainable, new_opt_state, value = step(trainable, opt_state)
            value = float(value)
            if not math.isfinite(value):
                per_batch = np.asarray(_batch_losses(kinetics, trainable, fixed, problems_data["train"], static))
                bad = [b for b, v in zip(train_batches, per_batch, strict=True) if not math.isfinite(v)]
                raise NonFiniteLossError(f"training loss became non-finite at step {index + 1} (batches {bad}); "
                                         f"the last good checkpoint is kept"
                                         + (f" in {config.checkpoint_dir}" if config.checkpoint_dir else ""))
            record = {"step": index + 1, "train": value, "seconds": time.perf_counter() - start}
            if "validation" in problems_data:
                record["validation"] = float(validation_loss(new_trainable))
            trainable, opt_state = new_trainable, new_opt_state
            monitored = record.get("validation", record["train"])
            if monitored < best_value:
                best_value, best_step, best = monitored, index + 1, trainable
            history.append(record)
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "seconds")})
            done = "validation" in problems_data and index + 1 - best_step >= config.patience
            if config.checkpoint_dir and ((index + 1) % config.checkpoint_every == 0 or done
                                          or index + 1 == config.steps):
                save_checkpoint(config.checkpoint_dir, {"trainable": trainable, "opt_state": opt_state,
                                                        "best": best}, index + 1, history, key)
            if done:
                stopped = f"early stopping: no validation improvement for {config.patience} steps"
                break
    finally:
        bar.close()
    final = best if "validation" in problems_data else trainable
    model = eqx.tree_at(lambda k: k.residual, kinetics, final["residual"])
    params = {**{k: float(v) for k, v in base_params.items()},
              **{k: float(jnp.exp(v)) for k, v in final["log_params"].items()}}
    return TrainResult(Twin(model, params, twin.noise), history, best_step, stopped, time.perf_counter() - start,
                       resumed)


def _valid_weight(value) -> bool:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and value >= 0


@functools.lru_cache(maxsize=32)
def _optimiser(learning_rate: float, weight_decay: float, clip_norm: float) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; one object per setting, so compiled steps are reused across fits."""
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(learning_rate, weight_decay=weight_decay))


@eqx.filter_jit
def _batch_losses(kinetics: HybridKinetics, trainable, fixed, problem, static):
    """Negative log-likelihood per batch (NaN for a failed solve: never a silent number). Every array comes in as
    an argument, so one compilation serves every fit of the same structure and shapes."""
    settings, variables = static
    model = eqx.tree_at(lambda k: k.residual, kinetics, trainable["residual"])
    params = {**fixed["params"], **{k: jnp.exp(v) for k, v in trainable["log_params"].items()}}
    prediction, status = predict_observed(model, params, problem["encoded"], settings, variables)
    nll = jax.vmap(lambda p, v, m, c: negative_log_likelihood(p[..., None], v, m, c, fixed["sigma_abs"],
                                                               fixed["sigma_rel"]),
                   in_axes=(1, 1, 1, 1))(prediction, problem["values"], problem["mask"], problem["censored"])
    return jnp.where(status == 0, nll, jnp.nan)


@eqx.filter_jit
def _train_step(kinetics: HybridKinetics, trainable, opt_state, fixed, problem, static, optimiser):
    def loss(t):  # a zero weight times a finite loss is 0; a failed solve (NaN) stays NaN and stops the fit
        return jnp.sum(fixed["weights"] * _batch_losses(kinetics, t, fixed, problem, static))

    value, grads = eqx.filter_value_and_grad(loss)(trainable)
    updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(trainable, eqx.is_array))
    return eqx.apply_updates(trainable, updates), opt_state, value


def _progress(config: TrainConfig, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=config.steps, initial=initial, desc="training residual", unit="step",
                disable=not config.progress or bool(os.environ.get("CGT_TWIN_NO_PROGRESS")))
