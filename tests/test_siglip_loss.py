"""SigLIP's sigmoid loss: by hand on one process, and on 2 gloo ranks equal to the single-process
loss and gradients (weights, scale and bias) on the concatenated batch, as DDP averages them."""

import math
import os

import torch
import torch.distributed as dist

from families.siglip.loss import siglip_loss
from tests.servers import on_ranks

WORLD, LOCAL_B, DIM = 2, 4, 8


def _inputs():
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(DIM, DIM, generator=g),
        torch.randn(WORLD * LOCAL_B, DIM, generator=g),
        torch.randn(WORLD * LOCAL_B, DIM, generator=g),
    )


def _params(w):
    return (
        w.clone().requires_grad_(),
        torch.tensor(math.log(10.0), requires_grad=True),
        torch.tensor(-10.0, requires_grad=True),
    )


def _forward(w, x_img, x_txt, scale, bias):
    img = torch.nn.functional.normalize(x_img @ w, dim=-1)
    txt = torch.nn.functional.normalize(x_txt @ w.T, dim=-1)
    return siglip_loss(img, txt, scale.exp(), bias)


def _worker(rank, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    w0, x_img, x_txt = _inputs()
    w, scale, bias = _params(w0)
    sl = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    loss = _forward(w, x_img[sl], x_txt[sl], scale, bias)
    loss.backward()
    for g in (w.grad, scale.grad, bias.grad):  # what DDP does: average parameter gradients over ranks
        dist.all_reduce(g)
        g /= WORLD
    losses = [torch.zeros(()) for _ in range(WORLD)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        queue.put((torch.stack(losses).mean().item(), w.grad.tolist(), scale.grad.item(), bias.grad.item()))
    dist.barrier()
    dist.destroy_process_group()


def test_distributed_sigmoid_loss_and_gradients_match_single_process():
    w0, x_img, x_txt = _inputs()
    w, scale, bias = _params(w0)
    ref = _forward(w, x_img, x_txt, scale, bias)
    ref.backward()
    ((loss, grad_w, grad_scale, grad_bias),) = on_ranks(_worker, WORLD)
    assert abs(loss - ref.item()) < 1e-5
    torch.testing.assert_close(torch.tensor(grad_w), w.grad, rtol=1e-5, atol=1e-6)
    assert abs(grad_scale - scale.grad.item()) < 1e-5 and abs(grad_bias - bias.grad.item()) < 1e-5
    assert w.grad.abs().sum() > 0 and abs(bias.grad.item()) > 0  # not vacuous


def test_single_process_loss_by_hand():
    img = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    scale, bias = 10.0, -10.0
    expected = 0.0
    for i in range(5):
        for j in range(5):
            z = scale * float(img[i] @ txt[j]) + bias
            y = 1.0 if i == j else -1.0
            expected -= math.log(1.0 / (1.0 + math.exp(-y * z)))
    expected /= 5
    got = siglip_loss(img, txt, torch.tensor(scale), torch.tensor(bias)).item()
    assert abs(got - expected) < 1e-4
