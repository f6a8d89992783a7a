"""What the trainer does differently on a GPU, decided once from the device: ``DeviceChoices``.

Every choice the PyTorch backend makes because it runs on CUDA is a field here, derived from
the device by ``device_choices`` and nowhere else; the loop, ``parallel`` and
``distributed`` read the record. A choice written as ``device.type == "cuda"`` where it is used
is a code path no CPU test runs; a field can be set on a CPU where the CPU can run it
(``device_choices(cpu, fused_adamw=True)``: torch's fused AdamW kernel exists on CPU since torch
2.4), so the CPU tests run the GPU's optimizer in every parallel layout.

What only a GPU can show stays out of reach here: nccl (``backend``), page-locked memory
(``pin_memory`` needs CUDA), the CUDA flash attention kernel and a real MFU.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass

import torch

__all__ = ["DeviceChoices", "device_choices"]


@dataclass(frozen=True)
class DeviceChoices:
    """The trainer's device-dependent choices (``device_choices`` derives them).

    - ``fused_adamw``: torch's fused (single-kernel) AdamW for every optimizer the backend
      builds (``optim.build_optimizer``); the same update as the foreach kernel.
    - ``pin_memory``: the prefetched batches in page-locked host memory, copied without
      blocking (needs CUDA).
    - ``backend``: the process group's backend, ``"nccl"`` or ``"gloo"``;
      ``bind_device``: ``torch.cuda.set_device`` before joining it (nccl's rank -> GPU).
    - ``ddp_device_ids``: DDP's ``device_ids`` (None for CPU modules).
    - ``gpu_summary``: the segment summary names the GPU (``torch.cuda.get_device_name``) and
      computes MFU from the GPU's peak; otherwise it names the CPU and MFU is None.
    - ``fp16_compute``: fp16 training is offered (CUDA); on a CPU it is refused (bf16 is not).
    - ``expects_flash_attention``: the memory plan assumes the flash SDPA kernel here; the
      loop logs the kernel it found and a warning when it is not flash (it does not refuse to
      train: fp32 has no CUDA flash kernel, and a fallback is slower, not wrong).
    """

    device: torch.device
    fused_adamw: bool
    pin_memory: bool
    backend: str
    bind_device: bool
    ddp_device_ids: tuple[torch.device, ...] | None
    gpu_summary: bool
    fp16_compute: bool
    expects_flash_attention: bool

    def device_name(self) -> str:
        """The accelerator's name for the segment summary, or the CPU's."""
        if self.gpu_summary:
            return torch.cuda.get_device_name(self.device)
        return platform.processor() or platform.machine() or "cpu"


def device_choices(device: torch.device | str, **overrides) -> DeviceChoices:
    """The choices for ``device`` (CUDA: every GPU choice on; otherwise every one off), with
    ``overrides`` replacing fields by name (tests set the ones a CPU can run: ``fused_adamw``).

    Raises ``TypeError`` naming an unknown field.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"  # the one device-type decision of the trainer
    choices = DeviceChoices(
        device=device,
        fused_adamw=cuda,
        pin_memory=cuda,
        backend="nccl" if cuda else "gloo",
        bind_device=cuda,
        ddp_device_ids=(device,) if cuda else None,
        gpu_summary=cuda,
        fp16_compute=cuda,
        expects_flash_attention=cuda,
    )
    return dataclasses.replace(choices, **overrides)
