"""The distributed contrastive loss equals the single-process loss on the concatenated batch, and
so do the gradients DDP would average (2 gloo ranks)."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from families.clip.loss import clip_loss
from tests.servers import free_port

WORLD, LOCAL_B, DIM = 2, 4, 8


def _inputs():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(DIM, DIM, generator=g)  # a shared "model" weight
    x_img = torch.randn(WORLD * LOCAL_B, DIM, generator=g)
    x_txt = torch.randn(WORLD * LOCAL_B, DIM, generator=g)
    return w, x_img, x_txt


def _forward(w, x_img, x_txt, scale):
    img = torch.nn.functional.normalize(x_img @ w, dim=-1)
    txt = torch.nn.functional.normalize(x_txt @ w.T, dim=-1)
    return clip_loss(img, txt, scale.exp())


def _worker(rank, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    w, x_img, x_txt = _inputs()
    w = w.clone().requires_grad_()
    scale = torch.tensor(2.0, requires_grad=True)
    sl = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
    loss = _forward(w, x_img[sl], x_txt[sl], scale)
    loss.backward()
    # what DDP does: average parameter gradients over ranks
    for g in (w.grad, scale.grad):
        dist.all_reduce(g)
        g /= WORLD
    losses = [torch.zeros(()) for _ in range(WORLD)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        queue.put((torch.stack(losses).mean().item(), w.grad.tolist(), scale.grad.item()))
    dist.barrier()  # leave together: a rank exiting while the other tears down gloo aborts it
    dist.destroy_process_group()


def test_distributed_loss_and_gradients_match_single_process():
    w, x_img, x_txt = _inputs()
    w = w.clone().requires_grad_()
    scale = torch.tensor(2.0, requires_grad=True)
    ref = _forward(w, x_img, x_txt, scale)
    ref.backward()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    loss, grad_w, grad_scale = queue.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert abs(loss - ref.item()) < 1e-5
    torch.testing.assert_close(torch.tensor(grad_w), w.grad, rtol=1e-5, atol=1e-6)
    assert abs(grad_scale - scale.grad.item()) < 1e-6
    assert w.grad.abs().sum() > 0  # the comparison is not vacuous


def test_single_process_loss_is_symmetric_cross_entropy():
    img = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    logits = 10.0 * img @ txt.T
    expected = 0.0
    for i in range(5):  # by hand: -log softmax of the matching pair, both directions
        expected += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    expected /= 10
    assert abs(clip_loss(img, txt, torch.tensor(10.0)).item() - expected.item()) < 1e-5
