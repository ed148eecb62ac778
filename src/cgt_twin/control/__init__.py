"""Control: the twin inside a control loop — online state estimation (`Predictor`) and model-predictive feeding.

`Predictor` assimilates at-line measurements of a running batch (a particle filter over states and posterior
parameter draws) and forecasts with bands; the MPC controller chooses the next feeds against the predictor's
particles with chance constraints (DESIGN.md: estimator and controller share the one `Twin`).
"""

from .predictor import Predictor, PredictorSettings, Rejection, UpdateReport

__all__ = ["Predictor", "PredictorSettings", "Rejection", "UpdateReport", "plot_forecast", "plot_plan"]

_PLOTS = ("plot_forecast", "plot_plan")


def __getattr__(name: str):
    """The plots (`cgt_twin.control.plots`) load matplotlib only when first used: a control loop never pays for it."""
    if name in _PLOTS:
        from . import plots

        return getattr(plots, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
