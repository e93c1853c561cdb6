"""The training speed levers (issue 19): FLOP counting, the peak, the attention kernel choice, the
read-ahead thread, precision resolution, compile under DDP, and the steady-state clock."""

import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import transformer
from models.transformer import Block, attention
from training import flops
from training.callbacks import Throughput, utilisation
from training.config import TrainConfig
from training.prefetch import Prefetcher
from training.strategy import DDPStrategy, adamw_kernel, cpu_has_bf16, resolve_precision

ROOT = Path(__file__).resolve().parents[1]


def test_flops_of_a_transformer_block_forward_and_backward_are_counted_exactly():
    torch.manual_seed(0)
    b, n, w, heads = 3, 10, 32, 2
    block = Block(w, heads)
    x = torch.randn(b, n, w, requires_grad=True)
    with flops.counter() as count:
        block(x).sum().backward()
    linear = 2 * b * n * (w * 3 * w + w * w + w * 4 * w + 4 * w * w)  # qkv, proj, mlp in and out
    attn = 2 * 2 * b * heads * n * n * (w // heads)  # QK^T and AV
    # backward: a linear's input and weight gradients (2x its forward); attention's five matmuls (2.5x)
    assert count.get_total_flops() == 3 * linear + attn + 2.5 * attn


def test_attention_takes_the_math_kernel_for_short_bf16_sequences_on_cpu_with_the_same_result(monkeypatch):
    torch.manual_seed(0)
    q, k, v = (torch.randn(4, 2, 20, 16, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    mask = torch.rand(4, 1, 1, 20) > 0.3
    mask[..., 0] = True
    for kwargs in ({"causal": True}, {"mask": mask}, {}):
        with flops.counter() as count:
            short = attention(q, k, v, **kwargs)
        ops = {str(op) for op in count.get_flop_counts()["Global"]}
        assert "aten.bmm" in ops and not any("flash" in op for op in ops), ops  # the math kernel's matmuls
        grads_short = torch.autograd.grad(short.float().sum(), (q, k, v))
        monkeypatch.setattr(transformer, "CPU_MATH_MAX_KEYS", 0)
        flash = attention(q, k, v, **kwargs)
        grads_flash = torch.autograd.grad(flash.float().sum(), (q, k, v))
        monkeypatch.undo()
        ref = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=kwargs.get("mask"), is_causal=kwargs.get("causal", False)
        )
        assert (short.float() - ref).abs().max() < 3e-2 and (flash.float() - ref).abs().max() < 3e-2
        for a, c in zip(grads_short, grads_flash):
            assert (a.float() - c.float()).abs().max() < 5e-2
    x = torch.randn(2, 2, 20, 16)  # fp32 keeps PyTorch's own choice
    with flops.counter() as count:
        attention(x, x, x)
    assert any("flash" in str(op) for op in count.get_flop_counts()["Global"])


def test_prefetcher_keeps_order_raises_where_the_loader_failed_and_stops_when_closed():
    assert list(Prefetcher(iter(range(50)), 3)) == list(range(50))
    assert list(Prefetcher(iter(range(5)), 0)) == list(range(5))

    def failing():
        yield from range(3)
        raise OSError("shard 7 unreadable")

    got = []
    with pytest.raises(OSError, match="shard 7"):
        for x in Prefetcher(failing(), 2):
            got.append(x)
    assert got == [0, 1, 2]

    pulled = []

    def endless():
        i = 0
        while True:
            pulled.append(i)
            yield i
            i += 1

    p = Prefetcher(endless(), 2)
    assert [next(p) for _ in range(4)] == [0, 1, 2, 3]
    p.close()
    assert not p.thread.is_alive() and len(pulled) <= 4 + 2 + 1  # read ahead by the depth, no further
    assert not [t for t in threading.enumerate() if t.name == "prefetch"]


def test_precision_auto_is_bf16_exactly_where_the_cpu_has_bf16_units():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu)[0] == "fp32" and resolve_precision("bf16", cpu)[0] == "bf16"
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert cpu_has_bf16() == native
    precision, why = resolve_precision("auto", cpu)
    assert precision == ("bf16" if native else "fp32") and why.startswith("auto")


def test_adamw_kernel_auto_is_fused_on_gpus_only():
    assert adamw_kernel("auto", torch.device("cpu")) == "foreach"
    assert adamw_kernel("auto", torch.device("cuda", 0)) == "fused"
    assert adamw_kernel("fused", torch.device("cpu")) == "fused"


def test_peak_flops_is_the_recipes_value_else_a_gpu_table_else_a_measured_matmul():
    cpu = torch.device("cpu")
    assert flops.peak_flops(TrainConfig(peak_flops=5e12), cpu) == (5e12, "train.peak_flops")
    assert flops.gpu_peak("NVIDIA H100 80GB HBM3") == 989e12 and flops.gpu_peak("NVIDIA A100-SXM4-40GB") == 312e12
    assert flops.gpu_peak("Some Future GPU") == 0.0
    peak, source = flops.peak_flops(TrainConfig(precision="fp32"), cpu)
    assert 1e9 < peak < 1e13 and "float32 matmul" in source


def test_mfu_is_model_flops_over_the_peak_of_all_workers():
    class R:
        flops_per_sample, peak_flops, world = 4e8, 1e11, 2

    got = utilisation(R(), 250.0)
    assert got["model_tflops_per_s"] == pytest.approx(0.1) and got["mfu"] == pytest.approx(0.5)
    R.flops_per_sample = None
    assert utilisation(R(), 250.0) == {}


def test_steady_clock_leaves_out_the_warm_up_and_reports_compile_time():
    clock = Throughput()
    clock.times = [0.0, 1.5, 31.5, 32.5, 33.5, 34.5]  # an eager step, a 30 s compiled one, then 1 s steps
    assert clock.steady_step_s() == pytest.approx(1.0)
    assert clock.samples_per_s(256) == pytest.approx(256.0)
    assert clock.compile_s() == pytest.approx(29.5)


def test_compile_under_deepspeed_is_refused_at_recipe_load():
    from config.typed import ConfigError
    from pipelines.config import load_recipe

    with pytest.raises(ConfigError, match="train.compile"):
        load_recipe(ROOT / "configs/clip_small.yaml", ["train.strategy=deepspeed", "train.compile=true"])


@pytest.mark.slow
def test_a_compiled_model_trains_like_the_eager_one():
    """DDPStrategy with train.compile: same losses as eager over a few AdamW steps (fp32, 1e-4)."""

    def losses(compile_: bool) -> list[float]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        strategy = DDPStrategy(
            model, opt, sched, TrainConfig(compile=compile_, precision="fp32"), 1, torch.device("cpu"), 0
        )
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
        out = []
        for _ in range(5):
            loss = F.cross_entropy(strategy.forward(x), y)
            strategy.backward(loss, last_micro=True)
            strategy.step()
            out.append(float(loss))
        return out

    from torch._dynamo.utils import counters

    counters.clear()
    eager, compiled = losses(False), losses(True)
    assert counters["stats"]["unique_graphs"] >= 1  # Dynamo did compile it
    assert max(abs(a - b) for a, b in zip(eager, compiled)) < 1e-4
    assert eager[-1] < eager[0]
