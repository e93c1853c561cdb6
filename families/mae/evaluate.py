"""Evaluation of a pretrained image encoder on held-out labelled images (MAE's workflow).

- linear probe: frozen features (mean of the encoder's patch tokens) of the train and held-out
  splits, standardised with the train statistics, and a multinomial logistic regression fitted on
  the train split (full-batch L-BFGS, L2 penalty); the same regression on raw pixels is the
  baseline the features must beat.
- fine-tuned classifiers: accuracy on the held-out split.
- reconstruction: MAE's loss on the held-out split at the recipe's mask ratio (a fixed mask seed),
  and a picture of originals / masked inputs / reconstructions.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from data.loading.shard_reading import eval_batches
from families.mae.task import reconstruction_grid


def labelled_batches(urls: list[str], image_size: int, label_field: str, classes: list[str], batch_size: int = 256):
    """(images, label indices) of a split; a label outside `classes` is -1 (always wrong)."""
    index = {c: i for i, c in enumerate(classes)}
    for images, items in eval_batches(urls, batch_size, image_size):
        labels = [index.get(str(it["meta"].get(label_field, "")), -1) for it in items]
        yield images, torch.tensor(labels)


@torch.no_grad()
def features(fn, urls, image_size, label_field, classes) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for images, labels in labelled_batches(urls, image_size, label_field, classes):
        xs.append(fn(images).float())
        ys.append(labels)
    return torch.cat(xs), torch.cat(ys)


def logistic_regression(
    train_x, train_y, test_x, test_y, num_classes: int, iterations: int = 100, weight_decay: float = 1e-4
) -> dict:
    """Accuracy of a linear classifier fitted on standardised train features (full-batch L-BFGS)."""
    keep = train_y >= 0
    train_x, train_y = train_x[keep], train_y[keep]
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    linear = torch.nn.Linear(train_x.shape[1], num_classes)
    opt = torch.optim.LBFGS(
        linear.parameters(), lr=1, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(train_x), train_y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        train_acc = (linear(train_x).argmax(1) == train_y).float().mean().item()
        test_acc = (linear(test_x).argmax(1) == test_y).float().mean().item()
    return {"train_accuracy": train_acc, "accuracy": test_acc}


def linear_probe(mae, urls_train, urls_eval, label_field, classes, iterations, weight_decay) -> dict:
    """Probe accuracy of the MAE encoder's features next to raw pixels'."""
    size = mae.cfg.image_size
    enc = mae.encoder.eval()
    out = {}
    for name, fn in (("probe", lambda x: enc(x)[:, 1:].mean(dim=1)), ("pixels", lambda x: x.flatten(1))):
        tr = features(fn, urls_train, size, label_field, classes)
        ev = features(fn, urls_eval, size, label_field, classes)
        res = logistic_regression(*tr, *ev, len(classes), iterations, weight_decay)
        out[f"{name}_accuracy"] = res["accuracy"]
        out[f"{name}_train_accuracy"] = res["train_accuracy"]
    return out


@torch.no_grad()
def classifier_accuracy(model, urls, label_field, classes) -> float:
    hits = n = 0
    for images, labels in labelled_batches(urls, model.encoder.patch_size * model.encoder.grid, label_field, classes):
        hits += (model(images).argmax(1) == labels).sum().item()
        n += len(labels)
    return hits / max(n, 1)


@torch.no_grad()
def reconstruction(mae, urls, picture: Path, seed: int = 0) -> dict:
    """Held-out masked-patch loss (the training objective) and a picture of the first 8 images."""

    g = torch.Generator().manual_seed(seed)
    total = n = 0
    first = None
    for images, _ in eval_batches(urls, 256, mae.cfg.image_size):
        loss, _, _ = mae(images, generator=g)
        total += loss.item() * len(images)
        n += len(images)
        if first is None:
            first = images[:8]
    if first is None:  # no batch at all (the grid below could not be drawn)
        raise ValueError("the held-out split is empty: raise data.holdout_fraction")
    reconstruction_grid(mae, first, picture, generator=torch.Generator().manual_seed(seed))
    return {"eval_reconstruction_loss": total / max(n, 1)}
