"""``bayes.toml``: what ``cgt-twin sample`` samples and how, checked before anything runs.

```toml
method = "nuts"            # or "laplace"
forward_mode = "auto"      # time one gradient each way, use the faster (default); true: forward, false: reverse

[model]                    # fields of BayesConfig
parameters = ["mu_max", "q_p"]      # omit: the identifiable subset
hierarchical = ["mu_max"]
group = "cell_line"
group_tau = 0.2            # optional: the between-group spread fixed (few groups), not sampled
held_uncertainty = "laplace"  # carry the held parameters' uncertainty into the draws ("none": hold them)
[model.priors.mu_max]      # override a spec's log-normal prior (median in the spec's unit, sd of the log)
median = 0.03
sigma = 0.3

[sampler]                  # fields of NutsConfig
chains = 4
warmup = 500
draws = 500
mode_steps = 30            # Newton steps to the posterior mode, where the chains start (0: at the twin's values)
independent_batches = false  # true: each batch of an unpooled, fixed-noise model sampled on its own
```
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path

from ..data.errors import CampaignValidationError, Problem
from ..simulate import SolverSettings
from .inference import NutsConfig
from .model import BayesConfig, Prior

__all__ = ["SampleSettings", "read_bayes_config"]

_TUPLES = ("parameters", "hierarchical", "variables", "initial_states")


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """Everything ``cgt-twin sample`` needs: the model, the sampler, the method and the differentiation mode."""

    model: BayesConfig = BayesConfig()
    sampler: NutsConfig = NutsConfig()
    method: str = "nuts"
    forward_mode: bool | str = "auto"


def _same_kind(default, value) -> bool:
    """Whether a TOML value has the kind of a setting's default (a number for a float, never a boolean for a number)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(default))


def _type_name(default) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(type(default),
                                                                                            type(default).__name__)


def read_bayes_config(path: str | os.PathLike | None, *, seed: int | None = None) -> SampleSettings:
    """Reads ``bayes.toml`` (None: the defaults). Unknown keys and wrong types are listed, not ignored."""
    if path is None:
        settings = SampleSettings()
    else:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CampaignValidationError(Problem(str(path), "config file not found")) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CampaignValidationError(Problem(str(path), f"not valid TOML ({exc})")) from None
        problems: list[Problem] = []
        known_top = {"method", "forward_mode", "model", "sampler"}
        problems += [Problem(str(path), f"unknown key {k!r}; known: {', '.join(sorted(known_top))}")
                     for k in raw if k not in known_top]
        model = dict(raw.get("model", {}))
        priors = {}
        for name, entry in dict(model.pop("priors", {})).items():
            try:
                priors[name] = Prior(**entry)
            except TypeError as exc:
                problems.append(Problem(str(path), f"[model.priors.{name}]: {exc}"))
        solver = model.pop("solver", None)
        fields = {f.name for f in dataclasses.fields(BayesConfig)}
        problems += [Problem(str(path), f"[model]: unknown key {k!r}") for k in model if k not in fields]
        sampler = dict(raw.get("sampler", {}))
        nuts_fields = {f.name for f in dataclasses.fields(NutsConfig)}
        problems += [Problem(str(path), f"[sampler]: unknown key {k!r}") for k in sampler if k not in nuts_fields]
        problems += [Problem(str(path), f"[sampler]: {k} must be {_type_name(getattr(NutsConfig(), k))}, got {v!r}")
                     for k, v in sampler.items() if k in nuts_fields and not _same_kind(getattr(NutsConfig(), k), v)]
        if problems:
            raise CampaignValidationError(problems, header="invalid bayes config")
        model = {k: tuple(v) if k in _TUPLES and isinstance(v, list) else v for k, v in model.items()}
        bayes = BayesConfig(**model, priors=priors,
                            **({"solver": SolverSettings(**solver)} if isinstance(solver, dict) else {}))
        mode = raw.get("forward_mode", "auto")
        if mode not in (True, False, "auto"):
            raise CampaignValidationError(Problem(str(path), f"forward_mode must be true, false or \"auto\", got {mode!r}"))
        try:
            nuts = NutsConfig(**sampler)
        except CampaignValidationError as exc:
            raise CampaignValidationError([Problem(str(path), f"[sampler]: {p.message}", column=p.column)
                                           for p in exc.problems], header="invalid bayes config") from None
        settings = SampleSettings(bayes, nuts, str(raw.get("method", "nuts")), mode)
    if settings.method not in ("nuts", "laplace"):
        raise CampaignValidationError(Problem("method", f"must be 'nuts' or 'laplace', got {settings.method!r}"))
    if seed is not None:
        settings = dataclasses.replace(settings, sampler=dataclasses.replace(settings.sampler, seed=seed))
    return settings
