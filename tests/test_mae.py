"""MAE: masking statistics, the encoder sees only visible patches, the loss is on masked patches
(against a direct computation), the classifier inherits the encoder, layer-wise lr decay."""

import pytest
import torch

from families.mae.model import MAE, ViTClassifier, patchify, random_masking, unpatchify
from pipelines.config import ConfigError, MAEModelConfig, ViTClassifierConfig, load_recipe, model_config

CFG = MAEModelConfig(
    image_size=16,
    patch_size=4,
    vision_width=32,
    vision_layers=2,
    vision_heads=2,
    decoder_width=16,
    decoder_layers=1,
    decoder_heads=2,
)


def test_patchify_round_trip_and_layout():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).reshape(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # patch 1 is the top-right 4x4 block; its first pixel holds the 3 channels of image pixel (0, 4)
    torch.testing.assert_close(p[0, 1, :3], x[0, :, 0, 4])
    torch.testing.assert_close(unpatchify(p, 4), x)


def test_random_masking_statistics():
    g = torch.Generator().manual_seed(0)
    b, n = 4000, 49
    ids_keep, mask, ids_restore = random_masking(b, n, 0.75, "cpu", g)
    assert ids_keep.shape == (b, 12)  # round(49 * 0.25)
    assert (mask.sum(dim=1) == n - 12).all()  # exactly 37 masked per sample
    assert (mask.gather(1, ids_keep) == 0).all()  # kept patches are the unmasked ones
    assert all(len(set(row.tolist())) == 12 for row in ids_keep[:50])
    # every patch position is masked with probability 37/49, independently of where it is
    per_position = mask.mean(dim=0)
    assert (per_position - 37 / 49).abs().max() < 0.03
    assert not torch.equal(mask[0], mask[1])
    # ids_restore inverts the shuffle
    shuffled = torch.arange(n).expand(b, n).gather(1, ids_restore.argsort(dim=1))
    torch.testing.assert_close(shuffled.gather(1, ids_restore), torch.arange(n).expand(b, n))


def test_encoder_receives_only_the_visible_quarter_of_the_patches():
    torch.manual_seed(0)
    model = MAE(
        MAEModelConfig(
            image_size=28,
            patch_size=4,
            vision_width=32,
            vision_layers=1,
            vision_heads=2,
            decoder_width=16,
            decoder_layers=1,
            decoder_heads=2,
        )
    )
    seen = {}
    model.encoder.transformer.register_forward_hook(lambda m, args, out: seen.update(enc=args[0].shape))
    model.decoder.register_forward_hook(lambda m, args, out: seen.update(dec=args[0].shape))
    model(torch.randn(3, 3, 28, 28))
    assert seen["enc"] == (3, 1 + 12, 32)  # class token + 25% of 49 patches
    assert seen["dec"] == (3, 1 + 49, 16)  # the decoder sees every position
    model(torch.randn(3, 3, 28, 28), mask_ratio=0.0)
    assert seen["enc"] == (3, 1 + 49, 32)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_loss_is_mse_on_masked_patches_only(norm_pix):
    from dataclasses import replace

    torch.manual_seed(0)
    model = MAE(replace(CFG, norm_pix_loss=norm_pix))
    images = torch.randn(2, 3, 16, 16)
    loss, pred, mask = model(images, generator=torch.Generator().manual_seed(1))
    # the direct computation, patch by patch
    total, count = 0.0, 0
    for b in range(2):
        for i in range(16):
            if mask[b, i] == 1:
                r, c = divmod(i, 4)
                target = images[b, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4].permute(1, 2, 0).reshape(-1)
                if norm_pix:
                    target = (target - target.mean()) / (target.var() + 1e-6) ** 0.5
                total += ((pred[b, i] - target) ** 2).mean()
                count += 1
    assert count == 2 * 12
    torch.testing.assert_close(loss, total / count)
    # predictions on visible patches do not enter the loss
    visible_changed = pred + (1 - mask).unsqueeze(-1) * 100.0
    torch.testing.assert_close(model.loss(images, visible_changed, mask), loss)


def test_reconstruction_keeps_visible_patches():
    torch.manual_seed(0)
    model = MAE(CFG).eval()
    images = torch.randn(2, 3, 16, 16)
    masked, recon = model.reconstruct(images, generator=torch.Generator().manual_seed(3))
    _, _, mask = model(images, generator=torch.Generator().manual_seed(3))
    vis = (1 - mask).unsqueeze(-1)
    torch.testing.assert_close(patchify(recon, 4) * vis, patchify(images, 4) * vis)
    assert (patchify(masked, 4) * mask.unsqueeze(-1)).abs().sum() == 0


def test_classifier_inherits_the_pretrained_encoder_and_decays_lr_by_depth():
    torch.manual_seed(0)
    mae = MAE(CFG)
    ccfg = ViTClassifierConfig(
        image_size=16, patch_size=4, vision_width=32, vision_layers=2, vision_heads=2, num_classes=5
    )
    clf = ViTClassifier(ccfg)
    clf.load_encoder(mae.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(clf.encoder(x), mae.encoder(x))
    assert clf(x).shape == (2, 5)
    with pytest.raises(ValueError, match="does not fit"):
        ViTClassifier(
            ViTClassifierConfig(image_size=16, patch_size=4, vision_width=32, vision_layers=3, vision_heads=2)
        ).load_encoder(mae.state_dict())
    groups = clf.param_groups(weight_decay=0.05, layer_decay=0.5, lr=1.0)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert lr_of[id(clf.head.weight)] == 1.0
    assert lr_of[id(clf.encoder.transformer.blocks[1].mlp[0].weight)] == 0.5
    assert lr_of[id(clf.encoder.transformer.blocks[0].attn.qkv.weight)] == 0.25
    assert lr_of[id(clf.encoder.patch_embed.weight)] == 0.125
    assert sum(len(g["params"]) for g in groups) == len(list(clf.parameters()))


def test_model_configs_are_a_tagged_union(tmp_path):
    r = load_recipe(None, ["model.kind=mae", "model.mask_ratio=0.6"])
    assert isinstance(r.model, MAEModelConfig) and r.model.mask_ratio == 0.6
    with pytest.raises(ConfigError, match="unknown key 'model.decoder_widht'"):
        load_recipe(None, ["model.kind=mae", "model.decoder_widht=3"])
    with pytest.raises(ConfigError, match="model.kind: 'vae' is not one of"):
        load_recipe(None, ["model.kind=vae"])
    with pytest.raises(ConfigError, match="unknown key 'model.mask_ratio'"):
        load_recipe(None, ["model.mask_ratio=0.5"])  # a CLIP model has no mask ratio
    c = ViTClassifierConfig(classes=("a", "b"))
    from dataclasses import asdict

    assert model_config(asdict(c)) == c  # as stored with a checkpoint


def test_sincos_position_embeddings_are_in_the_official_mae_layout():
    # MAE's formula (He et al. 2022, its get_2d_sincos_pos_embed; timm's too): for the patch at row r,
    # column c of the grid, channel k < D/4 is sin(c w_k), D/4 + k is cos(c w_k), then the same for r,
    # with w_k = 10000^(-k / (D/4)); patches in row-major order
    import math

    from models.vit import sincos_2d

    width, grid = 16, 3
    q = width // 4
    emb = sincos_2d(width, grid)
    assert emb.shape == (grid * grid, width)
    for r in range(grid):
        for c in range(grid):
            want = []
            for pos in (c, r):
                w = [10000 ** (-k / q) for k in range(q)]
                want += [math.sin(pos * x) for x in w] + [math.cos(pos * x) for x in w]
            assert torch.allclose(emb[r * grid + c], torch.tensor(want), atol=1e-6), (r, c)
    # the columns vary along the first half: patch (0, 1) differs from (0, 0) there, not in the second
    assert not torch.allclose(emb[1, : width // 2], emb[0, : width // 2])
    assert torch.allclose(emb[1, width // 2 :], emb[0, width // 2 :])
