"""Bayesian uncertainty of a twin: a numpyro model from any twin (priors from the parameter specs, the fit's
likelihood with censoring and masks, batches as a plate, non-centred hierarchical batch and group effects), NUTS and
the Laplace approximation, the `Posterior` with diagnostics and ArviZ export, and the posterior predictive.

```python
from cgt_twin.bayes import BayesConfig, NutsConfig, sample
posterior = sample(fit.twin, campaign, BayesConfig(hierarchical=("mu_max",), group="cell_line"),
                   NutsConfig(chains=4, warmup=500, draws=500), standard_errors=fit.standard_errors)
print(posterior.report())
bands = cgt_twin.predict.predict(fit.twin, campaign, posterior=posterior)
# held parameters' uncertainty carried into the draws (Laplace correction): BayesConfig(held_uncertainty="laplace")
ensemble = train_ensemble(hybrid_twin, campaign, n_members=5)     # the neural residual's uncertainty
bands = cgt_twin.predict.predict(hybrid_twin, campaign, posterior=posterior, ensemble=ensemble)
```
"""

from .ensemble import ENSEMBLE_FILES, ResidualEnsemble, ensemble_bands, ensemble_draws, train_ensemble
from .held import HELD_UNCERTAINTY, HeldCorrection
from .inference import (
    Curvature,
    NutsConfig,
    curvature_at_mode,
    curvature_at_twin,
    gradient_times,
    held_correction,
    host_devices_for_chains,
    laplace,
    potential,
    sample,
    sample_nuts,
    select_identifiable,
)
from .model import NUMERICAL_PARAMETERS, BayesConfig, Prior, TwinModel, build_model
from .plots import plot_pairs, plot_predictive_bands, plot_trace
from .posterior import POSTERIOR_FILES, THRESHOLDS, Posterior, PosteriorWarning
from .predictive import BANDS, batch_parameter_draws, predictive_bands, predictive_draws

__all__ = ["BANDS", "Curvature", "curvature_at_mode", "curvature_at_twin", "ENSEMBLE_FILES", "HELD_UNCERTAINTY", "HeldCorrection", "held_correction",
           "host_devices_for_chains", "NUMERICAL_PARAMETERS", "POSTERIOR_FILES", "ResidualEnsemble", "ensemble_bands",
           "ensemble_draws", "train_ensemble", "THRESHOLDS", "BayesConfig", "NutsConfig", "Posterior",
           "PosteriorWarning", "Prior", "TwinModel", "batch_parameter_draws", "build_model", "gradient_times", "laplace",
           "plot_pairs",
           "plot_predictive_bands", "plot_trace", "potential", "predictive_bands", "predictive_draws", "sample",
           "sample_nuts", "select_identifiable"]
