"""segbench: a workflow-orchestrated benchmark of semantic-segmentation methods.

Importing the package is cheap: heavy modules (torch, mlflow, matplotlib) are imported
only by the submodules that need them.
"""

__version__ = "0.1.0"
IGNORE_INDEX = 255
