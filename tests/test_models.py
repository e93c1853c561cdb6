"""Model towers: shapes, causal text attention, activation checkpointing changes nothing numerically."""

import torch

from families.clip.loss import clip_loss
from families.clip.model import CLIP
from pipelines.config import ModelConfig

CFG = ModelConfig(
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=2,
    vision_heads=2,
    text_width=32,
    text_layers=2,
    text_heads=2,
    context_length=8,
    embed_dim=16,
)


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 32, 32, generator=g)
    text = torch.randint(1, 100, (4, 8), generator=g)
    text[:, 5] = 499
    return images, text


def test_embeddings_are_normalised_and_text_is_causal():
    torch.manual_seed(0)
    model = CLIP(CFG, 500).eval()
    images, text = _batch()
    img, txt, scale = model(images, text)
    assert img.shape == txt.shape == (4, 16)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(4))
    changed = text.clone()
    changed[:, 6:] = 7  # tokens after the end token cannot change the pooled output
    torch.testing.assert_close(model.encode_text(changed), txt)
    assert abs(1 / scale.item() - 0.07) < 1e-6


def test_activation_checkpointing_gives_the_same_gradients():
    images, text = _batch()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = CLIP(CFG, 500).train()
        model.set_grad_checkpointing(ckpt)
        clip_loss(*model(images, text)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
