"""The parallel layout's arithmetic, once: data ranks and gradient accumulation steps.

Ranks form a (data, tensor) grid: ``data ranks = world size / tensor_parallel``, and each step
of ``global_batch`` sequences runs ``global_batch / (data ranks x micro_batch)`` micro-steps on
every rank. The config check (``config.check_layout``), the loop, the mesh
(``parallel.build_parallelism``) and the memory plan all compute these here. No imports: the
workflow's config check reads it without torch.
"""

from __future__ import annotations


class LayoutError(ValueError):
    """A layout whose numbers do not divide: tensor_parallel into the world size, or data ranks
    x micro_batch into the global batch."""


def data_ranks(world_size: int, tensor_parallel: int) -> int:
    """Data-parallel ranks of ``world_size`` ranks in tensor groups of ``tensor_parallel``.

    Raises ``LayoutError`` when ``tensor_parallel`` is below 1 or does not divide ``world_size``.
    """
    if tensor_parallel < 1 or world_size % tensor_parallel:
        raise LayoutError(
            f"tensor_parallel {tensor_parallel} does not divide the world size {world_size}"
        )
    return world_size // tensor_parallel


def accumulation_steps(global_batch: int, micro_batch: int, data_ranks: int) -> int:
    """Micro-steps per step: ``global_batch / (data_ranks x micro_batch)``.

    Raises ``LayoutError`` when ``data_ranks x micro_batch`` does not divide ``global_batch``.
    """
    rows = data_ranks * micro_batch
    if rows < 1 or global_batch % rows:
        raise LayoutError(
            f"global_batch {global_batch} is not a multiple of data-parallel ranks {data_ranks} "
            f"x micro_batch {micro_batch}"
        )
    return global_batch // rows
