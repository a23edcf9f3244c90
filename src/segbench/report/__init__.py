"""Per-study report: tables (``segbench.report.tables``) and figures (``.figures``).

``segbench report`` runs :func:`segbench.report.build.build_report`, which writes a study's
whole report (these, the paper's tables, the cross study's) and checks it against
:func:`segbench.report.outputs.study_outputs`.

Neither module imports torch or mlflow; matplotlib is imported only with ``.figures``
(and used through a bare Agg canvas, never pyplot). The names below load lazily.
"""

from __future__ import annotations

_TABLES = {"collect_runs", "summary_table", "aggregate_seeds", "write_tables"}
_FIGURES = {
    "training_curves",
    "curves_figure",
    "speed_accuracy",
    "per_class_iou",
    "qualitative_grid",
    "build_study_report",
    "expected_outputs",
}
__all__ = sorted(_TABLES | _FIGURES)


def __getattr__(name: str):
    if name in _TABLES:
        from segbench.report import tables

        return getattr(tables, name)
    if name in _FIGURES:
        from segbench.report import figures

        return getattr(figures, name)
    raise AttributeError(f"module 'segbench.report' has no attribute {name!r}")
