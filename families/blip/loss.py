"""BLIP's three losses, as small functions on tensors (tests/test_blip.py checks each against a
direct computation), and `blip_losses`, which runs them on a model and a batch.

- ITC with momentum distillation (ALBEF): image i is scored against the momentum text features of
  the batch and the text queue (and vice versa); the target mixes the one-hot positive with the
  momentum model's own softmax: alpha * softmax(s_m / T) + (1 - alpha) * onehot.
- ITM: the image-grounded text encoder classifies (image, text) as matched or not, on the
  positives and one hard negative per image and per text, drawn as BLIP draws them: with weight
  softmax(s) + 1e-4 over the batch, s the online features of one side against the momentum
  features of the other, never the positive (nor a pair whose caption is identical to it).
- LM: the image-grounded decoder predicts each next caption token, label smoothing 0.1.
The queues hold the momentum features of all ranks (gathered); everything else is per rank, as
in BLIP's code.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def itc_loss(img, txt, m_img, m_txt, image_queue, text_queue, temp, alpha: float) -> torch.Tensor:
    """img, txt, m_img, m_txt: [B, E] normalised; queues [E, Q]; the positives are on the diagonal."""
    b = img.shape[0]
    txt_all = torch.cat([m_txt.T, text_queue], dim=1)  # [E, B + Q]
    img_all = torch.cat([m_img.T, image_queue], dim=1)
    onehot = torch.zeros(b, txt_all.shape[1], device=img.device)
    onehot[:, :b] = torch.eye(b, device=img.device)
    with torch.no_grad():
        t_i2t = alpha * F.softmax(m_img @ txt_all / temp, dim=1) + (1 - alpha) * onehot
        t_t2i = alpha * F.softmax(m_txt @ img_all / temp, dim=1) + (1 - alpha) * onehot
    i2t = -(F.log_softmax(img @ txt_all / temp, dim=1) * t_i2t).sum(dim=1).mean()
    t2i = -(F.log_softmax(txt @ img_all / temp, dim=1) * t_t2i).sum(dim=1).mean()
    return (i2t + t2i) / 2


NEGATIVE_FLOOR = 1e-4  # BLIP's: every other pair keeps some chance, however confident the row


def hard_negatives(sim: torch.Tensor, same: torch.Tensor, generator=None) -> torch.Tensor:
    """For each row i, a column j drawn with weight softmax(sim[i])[j] + 1e-4 among the columns
    with same[i, j] False (same: the positive, and duplicates of it)."""
    weights = (F.softmax(sim.float(), dim=1) + NEGATIVE_FLOOR).masked_fill(same, 0.0)
    if (weights.sum(dim=1) == 0).any():
        raise ValueError("ITM needs at least two distinct captions in a batch")
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


def itm_loss(logits: torch.Tensor, n_pos: int) -> torch.Tensor:
    """logits [n_pos + n_neg, 2]: the first n_pos rows are matched pairs (class 1)."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:n_pos] = 1
    return F.cross_entropy(logits.float(), labels)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """logits [B, L, V] predicting targets [B, L] (-100: not a caption token)."""
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, label_smoothing=smoothing
    )


def lm_targets(model, text: torch.Tensor) -> torch.Tensor:
    """The next-token class of each position (-100 after the end token)."""
    nxt = text[:, 1:]
    after_end = torch.arange(nxt.shape[1], device=text.device) >= text.argmax(dim=1, keepdim=True)
    return model.lm_index[nxt].masked_fill(after_end, -100)


def gather(x: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def blip_losses(model, images: torch.Tensor, text: torch.Tensor, generator=None) -> dict:
    cfg = model.cfg
    tokens = model.image_tokens(images)
    img, txt = model.image_embed(tokens), model.text_embed(text)
    temp = model.temp.float()
    with torch.no_grad():
        m_img = model.image_embed(model.m_visual(images), model.m_image_proj).float()
        m_txt = model.text_embed(text, model.m_text, model.m_text_proj).float()
    itc = itc_loss(
        img.float(), txt.float(), m_img, m_txt, model.image_queue.float(), model.text_queue.float(), temp, cfg.alpha
    )
    if model.training:
        model.enqueue(gather(m_img), gather(m_txt))

    b = images.shape[0]
    with torch.no_grad():
        same = (text[:, None, :] == text[None, :, :]).all(dim=-1)  # identical captions
        neg_img = hard_negatives(txt.float() @ m_img.T / temp, same, generator)  # an image for each text
        neg_txt = hard_negatives(img.float() @ m_txt.T / temp, same, generator)  # a text for each image
    pair_tokens = torch.cat([tokens, tokens[neg_img], tokens])
    pair_text = torch.cat([text, text, text[neg_txt]])
    itm = itm_loss(model.itm_logits(pair_tokens, pair_text), b)

    lm = lm_loss(model.lm_logits(tokens, text)[:, :-1], lm_targets(model, text), cfg.label_smoothing)
    loss = itc + cfg.itm_weight * itm + cfg.lm_weight * lm
    return {"loss": loss, "itc": itc.detach(), "itm": itm.detach(), "lm": lm.detach()}
