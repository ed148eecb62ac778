"""Staged calibration of a twin: mechanistic fit first, then the neural residual with the mechanism frozen, then
(optionally) both together — the recipe of DESIGN.md, behind one call and the ``cgt-twin fit`` command."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path

from ..data.campaign import Campaign
from ..data.errors import CampaignValidationError, Problem
from ..hybrid import ResidualSpec, fit_covariate_encoding, hybrid
from ..models.twin import Twin
from .mechanistic import FitConfig, FitResult, fit_mechanistic
from .training import TrainConfig, TrainResult, train_hybrid

__all__ = ["CalibrationConfig", "Calibration", "calibrate", "read_calibration_config"]


@dataclasses.dataclass(frozen=True)
class CalibrationConfig:
    """The stages of a calibration.

    Attributes:
        mechanistic: settings of the mechanistic fit (stage 1).
        residual: the neural residual to add (None: a mechanistic twin only).
        training: settings of the network stage (2); its ``validation`` batches steer early stopping.
        joint_steps: steps of the joint stage (3), training the network and `mechanistic.parameters` together
            (0: skip).
    """

    mechanistic: FitConfig = FitConfig()
    residual: ResidualSpec | None = None
    training: TrainConfig = TrainConfig()
    joint_steps: int = 0


@dataclasses.dataclass
class Calibration:
    """The calibrated twin and the record of each stage."""

    twin: Twin
    mechanistic: FitResult
    training: TrainResult | None
    joint: TrainResult | None

    def settings(self) -> dict:
        """What an artifact records of the calibration (JSON-able): the stages' outcomes, and the initial states the
        mechanistic fit estimated with the parameters (batch -> state -> value, canonical units). For a mechanistic
        twin `cgt-twin predict`, `report` and `sample` start the fitted batches from them on the same campaign
        (`cgt_twin.io.load_fitted_initial_states`); a hybrid's network was trained from the measured starts, so
        a hybrid starts from those."""
        return {"mechanistic_status": self.mechanistic.status, "objective": self.mechanistic.objective,
                "training_stopped": self.training.stopped if self.training else None,
                "joint_stopped": self.joint.stopped if self.joint else None,
                "initial_states": {b: {s: float(v) for s, v in states.items()}
                                   for b, states in self.mechanistic.initial_states.items()}}


def calibrate(twin: Twin, campaign: Campaign, config: CalibrationConfig | None = None, *,
              seed: int | None = None, mechanistic: FitResult | None = None) -> Calibration:
    """Calibrates `twin` on `campaign` in stages (see `CalibrationConfig`).

    Args:
        twin: the starting twin (mechanistic; ``config.residual`` adds the network after stage 1).
        campaign: the data; ``config.mechanistic.holdout`` batches are left out of every stage.
        config: the stages and their settings.
        seed: overrides the seed of every stage (network initialisation included).
        mechanistic: a stage-1 result to reuse (e.g. shared by candidates of a hyperparameter search) instead of
            fitting again; it must come from the same twin, batches and mechanistic settings.
    """
    config = config or CalibrationConfig()
    if seed is not None:
        config = dataclasses.replace(config, mechanistic=dataclasses.replace(config.mechanistic, seed=seed))
    if mechanistic is None:
        mechanistic = fit_mechanistic(twin, campaign, config.mechanistic)
    fitted = mechanistic.twin
    if config.residual is None:
        return Calibration(fitted, mechanistic, None, None)
    holdout = set(config.mechanistic.holdout)
    training_campaign = campaign.drop(holdout) if holdout else campaign
    encoding = None
    if config.residual.covariates:  # levels and scales of the batches the network trains on (not validation ones)
        validation = set(config.training.validation)
        encoding = fit_covariate_encoding(training_campaign, config.residual,
                                          [b for b in training_campaign.batches if b not in validation
                                           and training_campaign.protocols[b].feeds_known])
    with_residual = Twin(hybrid(fitted.kinetics, config.residual, seed=config.mechanistic.seed, encoding=encoding),
                         fitted.params, fitted.noise)
    # the network trains from the batches' measured starts, not the initial states the mechanistic stage fitted:
    # those absorb part of the model error the network is there to learn, and a new batch starts from its measured
    # state (measured with validate.py: trained from the fitted starts, the synthetic plant's held-out VCD ratio
    # hybrid / mechanistic went from 0.39 to 0.85)
    training = train_hybrid(with_residual, training_campaign, fitted.noise,
                            dataclasses.replace(config.training, joint=False))
    result, joint = training.twin, None
    if config.joint_steps > 0:
        parameters = tuple(config.mechanistic.parameters or ())
        joint = train_hybrid(result, training_campaign, fitted.noise,
                             dataclasses.replace(config.training, joint=True, parameters=parameters,
                                                 steps=config.joint_steps, checkpoint_dir=None))
        result = joint.twin
    return Calibration(result, mechanistic, training, joint)


def read_calibration_config(path: str | Path | None, *, holdout: tuple[str, ...] = (),
                            hybrid_default: ResidualSpec | None = None) -> CalibrationConfig:
    """Reads ``fit.toml``: tables ``[mechanistic]`` (FitConfig fields), ``[residual]`` (ResidualSpec fields),
    ``[training]`` (TrainConfig fields) and ``joint_steps``. Unknown keys are errors naming the file and key.

    With `hybrid_default`, a ``[residual]`` table changes only what it names: ``[residual]`` with just
    ``covariates = ["clone"]`` is the default residual that also sees the clone."""
    raw: Mapping = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CampaignValidationError(Problem(str(path), "config file not found")) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CampaignValidationError(Problem(str(path), f"not valid TOML ({exc})")) from None
    problems = []

    def build(cls, table: str, extra: Mapping | None = None):
        values = dict(raw.get(table, {}))
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                problems.append(Problem(str(path), f"[{table}] has no setting {key!r}; known: {', '.join(sorted(names))}",
                                        column=key))
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
        if isinstance(values.get("solver"), dict):  # a [<table>.solver] sub-table: SolverSettings fields
            from ..simulate import SolverSettings

            try:
                values["solver"] = SolverSettings(**values["solver"])
            except TypeError as exc:
                problems.append(Problem(str(path), f"[{table}.solver]: {exc}", column="solver"))
                values.pop("solver")
        values.update(extra or {})
        return values

    known_top = {"mechanistic", "residual", "training", "joint_steps"}
    problems += [Problem(str(path), f"unknown section or setting {key!r}", column=key) for key in raw
                 if key not in known_top]
    mechanistic = build(FitConfig, "mechanistic", {"holdout": tuple(holdout)} if holdout else None)
    training = build(TrainConfig, "training")
    residual_table = build(ResidualSpec, "residual") if "residual" in raw else None
    if problems:
        raise CampaignValidationError(problems, header="invalid calibration config")
    try:
        if residual_table and hybrid_default is not None:
            residual = dataclasses.replace(hybrid_default, **residual_table)
        else:
            residual = ResidualSpec(**residual_table) if residual_table else hybrid_default
        return CalibrationConfig(FitConfig(**mechanistic), residual, TrainConfig(**training),
                                 int(raw.get("joint_steps", 0)))
    except TypeError as exc:
        raise CampaignValidationError(Problem(str(path), f"invalid setting ({exc})")) from None
