"""``segbench serve``: a small web app that segments uploaded images with a trained run.

:mod:`segbench.serve.inference` decodes uploads and runs the model (no web code);
:mod:`segbench.serve.app` is the Flask app and the server loop; :mod:`segbench.serve.best_run`
finds a study's best run;
``static/`` holds the page (HTML, JS, CSS; package data). See docs/serve.md.
"""

from __future__ import annotations

__all__ = ["best_run_of_study", "create_app", "serve"]


def __getattr__(name: str):
    # import Flask and torch only when the app is actually wanted
    if name == "best_run_of_study":
        from segbench.serve.best_run import best_run_of_study

        return best_run_of_study
    if name in __all__:
        from segbench.serve import app

        return getattr(app, name)
    raise AttributeError(name)
