"""Distribution strategies behind one small interface, so the engine loop is the same for both.

- `DDPStrategy`: torch DDP (gloo on CPU, nccl on GPU), AdamW, LambdaLR, optional bf16 autocast
  and torch.compile; rank 0 writes one `state.pt` (model, optimizer, scheduler).
- `DeepSpeedStrategy`: DeepSpeed ZeRO 0/1/2/3 initialised inside the Ray Train worker on Ray's
  process group, with the same torch AdamW and LambdaLR handed to DeepSpeed; bf16 through
  DeepSpeed; optional CPU offload and activation checkpointing. Every rank writes its shard of the
  checkpoint (`engine.save_checkpoint`) into the same folder, which Ray Train merges.

Interface: `forward(*inputs)`, `backward(loss, last_micro)`, `step() -> grad_norm`, `lr`,
`clamp_(name, lo, hi)` (a parameter, exactly, master copy included), `save(dir)`, `load(dir)`,
`module` (the unwrapped model).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Literal, cast

import torch

STATE_FILE = "state.pt"
DS_TAG = "ds"


def cpu_has_bf16() -> bool:
    """The processor computes in bf16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def adamw_kernel(choice: str, device: torch.device) -> str:
    """`train.optimizer_kernel` for this device: auto is fused on a GPU, for-each on a CPU (the
    kernel the CPU runs were measured with; the crashes once blamed on the fused CPU kernel were the
    functional collectives', README "Native crashes")."""
    if choice != "auto":
        return choice
    return "fused" if device.type == "cuda" else "foreach"


def resolve_precision(
    precision: Literal["auto", "fp32", "bf16"], device: torch.device
) -> tuple[Literal["auto", "fp32", "bf16"], str]:
    """`train.precision` for this device (auto: bf16 where it is native), and why."""
    if precision != "auto":
        return precision, "train.precision"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ("bf16" if ok else "fp32"), f"auto: {torch.cuda.get_device_name(device)}"
    ok = cpu_has_bf16()
    return ("bf16" if ok else "fp32"), f"auto: the CPU {'has' if ok else 'lacks'} AVX512-BF16/AMX"


class DDPStrategy:
    name = "ddp"

    def __init__(self, model: torch.nn.Module, opt, sched, tcfg, world: int, device: torch.device, rank: int):
        self.module, self.opt, self.sched = model, opt, sched
        self.clip = tcfg.clip_grad
        self.micro = tcfg.grad_accum
        self.rank = rank
        self.wrapped = model
        if world > 1:
            self.wrapped = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg.precision == "bf16")
        self.world = world
        # the DDP module compiled whole (DDP's optimizer splits the graph at its gradient buckets)
        self.compiled = torch.compile(self.wrapped) if tcfg.compile else None
        self.eager = False

    def forward(self, *inputs):
        with self.autocast:
            return (self.wrapped if self.eager or self.compiled is None else self.compiled)(*inputs)

    @contextlib.contextmanager
    def uncompiled(self):
        """Forward eagerly inside (FLOP counting: Dynamo would run a call under a dispatch mode
        uncompiled and never compile that frame again)."""
        self.eager = True
        try:
            yield
        finally:
            self.eager = False

    def sync_context(self, last_micro: bool):
        if self.world > 1 and not last_micro:
            return cast(torch.nn.parallel.DistributedDataParallel, self.wrapped).no_sync()  # world > 1: DDP
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        with self.sync_context(last_micro):
            (loss / self.micro).backward()

    def step(self, skip: bool = False) -> float:
        """Clip, update, advance the schedule; the update is skipped when `skip` (a non-finite loss
        on some rank) or when the gradient norm is not finite."""
        norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.clip)
        if not skip and torch.isfinite(norm):
            self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return float(norm)

    @torch.no_grad()
    def clamp_(self, name: str, lo: float, hi: float) -> None:
        """Clamp parameter `name` of the model in place (the optimizer updates it in place)."""
        self.module.get_parameter(name).clamp_(lo, hi)

    @property
    def lr(self) -> float:
        return max(self.sched.get_last_lr())  # the peak group (layer-wise decay: the head)

    def save(self, d: Path) -> None:
        if self.rank == 0:
            torch.save(
                {
                    "model": self.module.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(),
                },
                d / STATE_FILE,
            )

    def load(self, d: Path) -> None:
        state = torch.load(d / STATE_FILE, map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])


def deepspeed_config(tcfg) -> dict:
    ds = tcfg.deepspeed
    zero: dict = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_params and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    cfg = {
        "train_micro_batch_size_per_gpu": tcfg.batch_size,
        "gradient_accumulation_steps": tcfg.grad_accum,
        "gradient_clipping": tcfg.clip_grad,
        "zero_optimization": zero,
        "bf16": {"enabled": tcfg.precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
        # the torch AdamW this strategy hands DeepSpeed also steps offloaded fp32 partitions (ZeRO-
        # Offload would otherwise insist on DeepSpeedCPUAdam, a 3-minute JIT build)
        "zero_force_ds_cpu_optimizer": False,
    }
    return cfg


class DeepSpeedStrategy:
    name = "deepspeed"

    def __init__(self, model: torch.nn.Module, opt, sched, tcfg, world: int, device: torch.device, rank: int):
        import deepspeed

        if device.type == "cpu":
            # Skip the shared-memory allreduce op DeepSpeed would JIT-compile (~40 s of g++):
            # plain gloo collectives on Ray's process group instead.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.module = model
        self.engine, self.opt, _, self.sched = deepspeed.initialize(
            model=model, optimizer=opt, lr_scheduler=sched, config=deepspeed_config(tcfg), dist_init_required=False
        )
        self.bf16 = tcfg.precision == "bf16"
        self.rank = rank

    def uncompiled(self):
        return contextlib.nullcontext()

    def forward(self, *inputs):
        if self.bf16:
            inputs = tuple(x.to(torch.bfloat16) if x.is_floating_point() else x for x in inputs)
        return self.engine(*inputs)

    def backward(self, loss: torch.Tensor, last_micro: bool) -> None:
        self.engine.backward(loss)  # DeepSpeed scales by 1/grad_accum itself
        self.engine.step()  # an optimizer step only at the accumulation boundary

    def step(self, skip: bool = False):
        """The gradient norm (None when DeepSpeed did not compute one). The update happened in
        backward (DeepSpeed steps at the accumulation boundary): `skip` cannot undo it."""
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else None

    @torch.no_grad()
    def clamp_(self, name: str, lo: float, hi: float) -> None:
        """Clamp parameter `name` in place: the optimizer's fp32 master copy (ZeRO 1/2/3 and bf16
        keep one, which the next step would copy back over a clamp of the model's weights alone)
        and the model's weights (under ZeRO-3 each rank's partitions of both). Every rank calls it."""
        from deepspeed.utils import (
            safe_get_full_fp32_param,
            safe_get_local_fp32_param,
            safe_set_full_fp32_param,
            safe_set_local_fp32_param,
        )

        p = self.module.get_parameter(name)
        if hasattr(p, "ds_id"):  # ZeRO-3: this rank's partitions, element by element (no gather)
            local = safe_get_local_fp32_param(p)
            if local is not None and local.numel():
                safe_set_local_fp32_param(p, local.clamp(lo, hi))
            p.ds_tensor.data.clamp_(lo, hi)  # type: ignore[attr-defined]  # ZeRO-3 adds ds_tensor at runtime
            # a small parameter stays whole on every rank (ZeRO-3 persists it), refreshed from the
            # partitions inside the step: clamp that copy too (released, it is empty: a no-op)
            p.data.clamp_(lo, hi)
            return
        master = safe_get_full_fp32_param(p)  # ZeRO-1/2 (bf16_optimizer too): every rank takes part
        if master is not None:
            value = master.clamp(lo, hi)
            safe_set_full_fp32_param(p, value)
            p.data.copy_(value.reshape(p.shape).to(p.dtype))
            return
        copy = fp16_wrapper_master(self.engine.optimizer, p)  # ZeRO-0 in bf16
        if copy is not None:
            copy.clamp_(lo, hi)
        p.clamp_(lo, hi)  # ZeRO-0 in fp32: the optimizer updates the model's weights themselves

    @property
    def lr(self) -> float:
        return max(self.sched.get_last_lr())  # the peak group (layer-wise decay: the head)

    def save(self, d: Path) -> None:
        self.engine.save_checkpoint(str(d), tag=DS_TAG)  # every rank writes its own shard files

    def load(self, d: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(d), tag=DS_TAG)
        if path is None:
            raise RuntimeError(f"{d}: no DeepSpeed checkpoint '{DS_TAG}' to resume from")


def fp16_wrapper_master(optimizer, p: torch.nn.Parameter):
    """The fp32 master copy of `p` that DeepSpeed's low-precision wrappers without ZeRO keep (ZeRO-0
    in bf16: FP16_UnfusedOptimizer's `fp32_groups`, one tensor per parameter; FP16_Optimizer's
    `fp32_groups_flat`, a flat tensor per group), as a view to clamp in place; None elsewhere
    (DeepSpeed's own safe_get_full_fp32_param does not know these wrappers)."""
    for i, group in enumerate(getattr(optimizer, "fp16_groups", ())):
        offset = 0
        for j, q in enumerate(group):
            if q is p:
                if hasattr(optimizer, "fp32_groups"):
                    return optimizer.fp32_groups[i][j]
                if hasattr(optimizer, "fp32_groups_flat"):
                    return optimizer.fp32_groups_flat[i].narrow(0, offset, q.numel()).view_as(q)
                return None
            offset += q.numel()
    return None


def make_strategy(model, opt, sched, tcfg, world: int, device, rank: int):
    cls = {"ddp": DDPStrategy, "deepspeed": DeepSpeedStrategy}[tcfg.strategy]
    return cls(model, opt, sched, tcfg, world, device, rank)


def export_state_dict(checkpoint_dir: Path) -> dict:
    """The full fp32 model state dict of a checkpoint of either strategy (no DeepSpeed engine:
    ZeRO shards are consolidated from the files with DeepSpeed's zero_to_fp32)."""
    checkpoint_dir = Path(checkpoint_dir)
    if (checkpoint_dir / STATE_FILE).exists():
        return torch.load(checkpoint_dir / STATE_FILE, map_location="cpu", weights_only=True)["model"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=DS_TAG)
    return {k: v.float() for k, v in sd.items()}
