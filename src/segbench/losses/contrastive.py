"""Cross-entropy + pixel contrastive loss, as FRM (Wang et al., arXiv 2412.08670) trains:

    L = CE(logits, labels) + lambda * L_contrast(embeddings, labels),   lambda = 1, tau = 0.1

The embeddings come from a 1x1-conv embedding head that exists in training only: the
training loop calls ``model.forward_train(images) -> {"logits", "embeddings"}`` for a loss
with ``needs_embeddings = True`` and passes ``embeddings=`` here. Called without
embeddings (validation), the loss is the CE term alone.

The contrastive term is the supervised pixel contrast of Wang et al., "Exploring
Cross-Image Pixel Contrast for Semantic Segmentation" (ICCV 2021), over anchors sampled
from the whole batch (so positives and negatives cross images)::

    z_i    = embedding of anchor i, L2-normalised
    L_i    = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau)
                                              / (exp(z_i.z_p / tau) + sum_{n in N(i)} exp(z_i.z_n / tau)) )
    L_contrast = mean of L_i over anchors with at least one positive

P(i): the other anchors of i's class; N(i): the anchors of other classes.

Sampling (bounded memory): labels are taken at the embeddings' resolution (nearest);
each class present among the labelled pixels gets
``k = min(samples_per_class, max_anchors // classes_present, pixels of the class)``
anchors, half of them "hard" (pixels the current prediction gets wrong) where there are
enough, the rest "easy" (Wang et al.'s hard-anchor sampling). With the defaults
(100 per class, at most 1024 anchors) the similarity matrix is at most 1024 x 1024
(4 MiB in float32; about 20 MiB with the masks and the autograd buffers), whatever the
image size or the batch.

Differences from Wang et al.'s code, on purpose: no memory bank (a queue of past pixel
and segment embeddings) and no tau / base_tau (0.1 / 0.07) factor on the loss: FRM's lambda
weighs the term; per-class sampling runs over the batch rather than per image.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from segbench import IGNORE_INDEX
from segbench.losses.ce import CrossEntropy
from segbench.losses.common import check_number


def sample_anchors(labels: torch.Tensor, hard: torch.Tensor, samples_per_class: int, max_anchors: int,
                   ignore_index: int = IGNORE_INDEX, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices into the flattened ``labels`` (1-D): per class, up to k anchors, hard first.

    ``hard`` flags (flattened, like labels) the pixels the prediction gets wrong.
    """
    valid = labels != ignore_index
    classes, counts = torch.unique(labels[valid], return_counts=True)
    if len(classes) == 0:
        return torch.zeros(0, dtype=torch.long, device=labels.device)
    per_class = min(samples_per_class, max(max_anchors // len(classes), 1))
    chosen = []
    for c in classes.tolist():
        idx_c = torch.nonzero(labels == c, as_tuple=False)[:, 0]
        k = min(per_class, len(idx_c))
        is_hard = hard[idx_c]
        hard_idx, easy_idx = idx_c[is_hard], idx_c[~is_hard]
        n_hard = min(len(hard_idx), max(k // 2, k - len(easy_idx)))
        n_easy = k - n_hard
        perm_h = torch.randperm(len(hard_idx), generator=generator, device="cpu")[:n_hard].to(labels.device)
        perm_e = torch.randperm(len(easy_idx), generator=generator, device="cpu")[:n_easy].to(labels.device)
        chosen += [hard_idx[perm_h], easy_idx[perm_e]]
    return torch.cat(chosen)


def pixel_contrast(z: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """The contrastive term over anchors z [A, D] (not yet normalised) with classes y [A]."""
    z = F.normalize(z.float(), dim=1)
    sim = z @ z.t() / temperature
    sim = sim - sim.max(dim=1, keepdim=True).values.detach()  # stability; cancels in the ratio
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=y.device)
    pos = same & ~eye
    neg = ~same
    exp = sim.exp()
    neg_sum = (exp * neg).sum(dim=1, keepdim=True)
    log_prob = sim - torch.log(exp + neg_sum)
    n_pos = pos.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return z.sum() * 0.0
    per_anchor = -(log_prob * pos).sum(dim=1)[has_pos] / n_pos[has_pos]
    return per_anchor.mean()


class CEContrastive(nn.Module):
    """CE + contrast_weight * pixel contrastive loss on the model's training-only embeddings.

    Options (config keys): ``temperature`` (tau, 0.1), ``contrast_weight`` (lambda, 1.0),
    ``samples_per_class`` (100) and ``max_anchors`` (1024) bound the anchors,
    ``class_weights`` for the CE term.
    """

    needs_embeddings = True

    def __init__(self, temperature: float = 0.1, contrast_weight: float = 1.0, samples_per_class: int = 100,
                 max_anchors: int = 1024, class_weights: list[float] | None = None,
                 ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.temperature = float(check_number("ce_contrastive", "temperature", temperature, greater_than=0))
        self.contrast_weight = float(check_number("ce_contrastive", "contrast_weight", contrast_weight, minimum=0))
        self.samples_per_class = int(check_number("ce_contrastive", "samples_per_class", samples_per_class,
                                                  integer=True, minimum=2))
        self.max_anchors = int(check_number("ce_contrastive", "max_anchors", max_anchors, integer=True, minimum=2))
        self.ignore_index = ignore_index
        self.ce = CrossEntropy(class_weights=class_weights, ignore_index=ignore_index)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, contrast_weight={self.contrast_weight}, "
                f"samples_per_class={self.samples_per_class}, max_anchors={self.max_anchors}")

    def contrastive(self, embeddings: torch.Tensor, labels: torch.Tensor,
                    logits: torch.Tensor | None = None) -> torch.Tensor:
        if embeddings.dim() != 4 or embeddings.shape[0] != labels.shape[0]:
            raise ValueError(f"ce_contrastive: embeddings must be [N, D, h, w] with the labels' batch size "
                             f"{labels.shape[0]}, got {tuple(embeddings.shape)}")
        n, d, h, w = embeddings.shape
        lab = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        if logits is not None:
            pred = F.interpolate(logits.detach().argmax(1, keepdim=True).float(), size=(h, w), mode="nearest")
            hard = (pred[:, 0].long() != lab).reshape(-1)
        else:
            hard = torch.zeros(n * h * w, dtype=torch.bool, device=labels.device)
        lab = lab.reshape(-1)
        idx = sample_anchors(lab, hard, self.samples_per_class, self.max_anchors, self.ignore_index)
        if len(idx) < 2:
            return embeddings.sum() * 0.0
        z = embeddings.permute(0, 2, 3, 1).reshape(-1, d)[idx]
        return pixel_contrast(z, lab[idx], self.temperature)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor,
                embeddings: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.ce(logits, labels)
        if embeddings is None:
            return loss
        return loss + self.contrast_weight * self.contrastive(embeddings, labels, logits)
