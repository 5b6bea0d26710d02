"""Evaluation: score agreement (SRCC/KRCC/PLCC) and the error-versus-discard characteristic.

Plots live in :mod:`fiqa_compile.eval.plots` and are not imported here, so metrics never pull in matplotlib.
"""
from fiqa_compile.eval.edc import EDC, best_curve, edc, edc_curve, pair_qualities, similarity_threshold, step_pauc
from fiqa_compile.eval.metrics import (LogisticFit, correlation_report, fit_logistic, krcc, mae, plcc, rmse, srcc,
                                       validate_scores)

__all__ = [
    "EDC", "LogisticFit", "best_curve", "correlation_report", "edc", "edc_curve", "fit_logistic", "krcc", "mae",
    "pair_qualities", "plcc", "rmse", "similarity_threshold", "srcc", "step_pauc", "validate_scores",
]
