"""Pure tensor math of RLHF: every function imports only torch and is tested by hand in tests/ops."""
from rlhfkit.ops.logprobs import entropy_from_logits, selective_logprobs, shift_for_next_token
from rlhfkit.ops.masked import masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "entropy_from_logits", "selective_logprobs", "shift_for_next_token",
    "masked_mean", "masked_sum", "masked_var", "masked_whiten",
]
