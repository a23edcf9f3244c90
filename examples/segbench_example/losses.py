"""A loss of one's own: ``smooth_ce(smoothing=0.1)``.

segbench calls it as ``smooth_ce(**params)`` (``params`` from the config); what it returns is
called as ``loss(logits, labels)`` with logits [N, C, H, W] and labels [N, H, W] (int64 train
ids, 255 = not scored) and returns a scalar tensor.
"""

from __future__ import annotations

import torch.nn.functional as F

IGNORE_INDEX = 255


def smooth_ce(smoothing: float = 0.1):
    """Cross-entropy with label smoothing; pixels labelled 255 carry no loss."""

    def loss(logits, labels):
        return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, label_smoothing=smoothing)

    return loss
