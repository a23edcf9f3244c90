"""A package of one's own for segbench: a model, a loss and a dataset folder (docs/extending.md).

segbench imports it by the import paths its config names (``segbench_example.models:TinyNet``,
``segbench_example.losses:smooth_ce``), so it only has to be importable: on PYTHONPATH, or
installed (``pip install -e``).
"""
