"""CTCLoss (PyTorch keeps it in `torch.nn.modules.loss`; it lives apart here beside the other losses)."""

from __future__ import annotations

from ...tensor import Tensor
from .. import functional as F
from .loss import _Loss


class CTCLoss(_Loss):
    """Connectionist Temporal Classification loss for unsegmented sequences (speech, handwriting):
    see `F.ctc_loss`."""

    def __init__(self, blank: int = 0, reduction: str = "mean", zero_infinity: bool = False) -> None:
        super().__init__(reduction=reduction)
        self.blank, self.zero_infinity = blank, zero_infinity

    def forward(self, log_probs: Tensor, targets: Tensor, input_lengths, target_lengths) -> Tensor:
        return F.ctc_loss(
            log_probs, targets, input_lengths, target_lengths, self.blank, self.reduction, self.zero_infinity
        )
