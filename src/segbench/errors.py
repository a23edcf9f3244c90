"""The errors a user should see as ``segbench STEP: error: MESSAGE`` (exit status 2), not as a traceback.

:class:`UserError` is the base of every error whose message names the file, key or value at
fault and says what to do about it; the command line catches it once (:func:`segbench.cli.main`).
Each area raises its own subclass:

* :class:`segbench.config.ConfigError` - an invalid configuration;
* :class:`segbench.data.DataError` - input data the pipeline cannot use, a failed download;
* :class:`segbench.weights.WeightsError` - a pretrained checkpoint that cannot be found,
  fetched or used (:class:`segbench.models.pretrained.PretrainedError`: one that does not fit);
* :class:`segbench.tracking.TrackingError` - the MLflow store cannot be reached or written;
* :class:`segbench.engine.train.NonFiniteLoss` - training diverged (NaN or infinite loss).

This module imports nothing, so every step (torch-free ones included) can use it.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""
