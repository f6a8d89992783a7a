"""The training loss: mean next-token cross-entropy in fp32, whole, chunked, or loss-parallel.

- ``LMLoss`` is the module a micro-step calls (``forward_loss`` of the model): data-parallel
  wrappers (DDP, FSDP2) wrap it, so that their hooks run around the whole loss.
- ``forward_loss``: up to ``loss_chunk_tokens`` predicted tokens the output layer's logits in
  one piece (as transformers computes them), more: ``chunked_cross_entropy``
  (``_ChunkedLinearCrossEntropy``: logits, loss and gradients chunk by chunk, never
  ``tokens x vocab`` logits at once).
- Under tensor parallelism the logits stay sharded over the vocabulary (a DTensor) and the
  cross-entropy runs inside ``loss_context`` (torch's ``loss_parallel``) without gathering
  them: ``causal_lm_loss``; ``scalar`` makes a plain tensor of the replicated loss.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from . import parallel
from .settings import TrainSettings

__all__ = [
    "LMLoss",
    "forward_loss",
    "chunked_cross_entropy",
    "loss_context",
    "causal_lm_loss",
    "scalar",
]


class LMLoss(nn.Module):
    """``forward(tokens)`` = ``forward_loss(model, tokens, settings)``: the module that data
    parallel wrappers (DDP, FSDP2) see, so that their hooks run around the whole loss."""

    def __init__(self, model: nn.Module, settings: TrainSettings) -> None:
        super().__init__()
        self.model = model
        self.settings = settings

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return forward_loss(self.model, tokens, self.settings)


def forward_loss(model: nn.Module, tokens: torch.Tensor, settings: TrainSettings) -> torch.Tensor:
    """Mean next-token cross-entropy of ``tokens`` (``(batch, seq_length + 1)`` ids), fp32.

    Up to ``settings.loss_chunk_tokens`` predicted tokens: the output layer's logits in one
    piece (as transformers computes them). More: ``chunked_cross_entropy``, which never holds
    more than one chunk's logits. Under tensor parallelism: the loss-parallel cross-entropy of
    the vocabulary-sharded logits (call inside ``loss_context``).
    """
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    hidden = model.base_model(input_ids=inputs).last_hidden_state
    head = model.get_output_embeddings()
    if labels.numel() <= settings.loss_chunk_tokens or parallel.is_vocab_parallel(head):
        # Under tensor parallelism the logits stay vocabulary-sharded (1/T per rank) and the
        # loss is loss-parallel: never gathered, so no chunking is needed.
        logits = head(hidden)
        return causal_lm_loss(logits, labels)
    return chunked_cross_entropy(
        hidden.flatten(0, 1), head.weight, labels.flatten(), settings.loss_chunk_tokens
    )


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Mean CE of ``hidden @ weight.T`` computed chunk by chunk, gradients included.

    The forward pass computes each chunk's logits (in the autocast dtype where autocast is on,
    as ``nn.Linear`` would), its loss in fp32, and at once the chunk's gradients
    (``softmax - onehot``) with respect to ``hidden`` and ``weight``; the logits are then
    dropped. Backward only scales the stored gradients. Same FLOPs as the plain loss; memory
    ``chunk x vocab`` logits plus one ``weight``-sized fp32 gradient, not ``tokens x vocab``.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk_tokens):
        n = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_tokens):
            h = hidden[start : start + chunk_tokens]
            y = labels[start : start + chunk_tokens]
            logits = (h @ weight.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            # d(sum of losses)/d(logits) = softmax - onehot, in place: one chunk buffer.
            grad_logits = logits.sub_(lse[:, None]).exp_()
            grad_logits[torch.arange(len(y), device=y.device), y] -= 1.0
            # Under autocast these matmuls run in the compute dtype, as autograd's would.
            # Half-precision weights (master-weight training, no autocast): the gradient
            # matmuls in their dtype; a no-op cast for fp32 weights and under autocast.
            grad_hidden[start : start + chunk_tokens] = grad_logits.to(weight.dtype) @ weight
            grad_weight += (grad_logits.t().to(h.dtype) @ h).float()
            del logits, lse, grad_logits
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.n = n
        ctx.weight_dtype = weight.dtype
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output / ctx.n
        return (
            (grad_hidden * scale).to(grad_hidden.dtype),
            (grad_weight * scale).to(ctx.weight_dtype),
            None,
            None,
        )


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_tokens: int
) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, labels)`` (mean) without all the logits at once.

    ``hidden`` is ``(tokens, hidden)``, ``weight`` the output layer's ``(vocab, hidden)``,
    ``labels`` ``(tokens,)``; at most ``chunk_tokens`` rows of logits exist at any time, in
    the forward and the backward pass. Equal to the plain loss and its gradients within fp32
    rounding (tests/test_train_step.py).
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens must be > 0, got {chunk_tokens}")
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, labels, chunk_tokens)


# ----------------------------------------------------------------------------- loss parallel


def loss_context(par: parallel.Parallelism) -> contextlib.AbstractContextManager:
    """``loss_parallel()`` under tensor parallelism (wrap forward-loss and backward), else none."""
    if par.tensor > 1:
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()
    return contextlib.nullcontext()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32; vocabulary-sharded DTensor logits stay sharded
    (call inside ``loss_context``)."""
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())


def scalar(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor for a (replicated) DTensor scalar such as the loss-parallel loss."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value
