"""Evaluation metrics for protected images and their edits (see docs/EVALUATION.md).

Every metric lives in its own module and registers a backend class (``decontext.metrics.base``);
``backends_for(run_info, options)`` returns those that apply to a run, and
``decontext.metrics.evaluate`` scores a run folder with them.
"""

from decontext.metrics.base import (  # noqa: F401
    BackendEntry,
    EvalOptions,
    MetricBackend,
    MetricSpec,
    backends_for,
    register,
    registered,
)
