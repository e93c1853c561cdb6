"""Loader: the epoch length is exact, split across ranks and DataLoader workers; eval reads all once."""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from data.loading.loader import LoaderSpec, TrainStream, train_loader
from data.loading.shard_reading import eval_samples
from tests.conftest import image_bytes


def _write_shards(root: Path, n_shards: int, per_shard: int) -> list[str]:
    import io

    urls = []
    for s in range(n_shards):
        path = root / f"train-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"s{s}_{i}"
                for ext, payload in (
                    ("jpg", image_bytes(s * 1000 + i, size=(40, 40))),
                    ("txt", f"caption {key}".encode()),
                    ("json", json.dumps({"n": i}).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        urls.append(str(path))
    return urls


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return _write_shards(tmp_path_factory.mktemp("shards"), 4, 25)


def _spec(urls, **kw):
    base = dict(urls=tuple(urls), batch_size=8, image_size=32, context_length=12, epoch_samples=100, shuffle_buffer=50)
    base.update(kw)
    return LoaderSpec(**base)


@pytest.mark.parametrize("loader_workers,start", [(0, 5), (2, 3), (3, 7), (3, 12)])
def test_resume_mid_epoch_rebuilds_the_same_batches(shards, loader_workers, start):
    spec = _spec(shards, epoch_samples=8 * 13)
    full = [b["caption"] for b in train_loader(spec, loader_workers, epoch=1)]
    full_images = [b["image"] for b in train_loader(spec, loader_workers, epoch=1)]
    resumed = list(train_loader(spec, loader_workers, epoch=1, start=start))
    assert len(full) == 13 and [b["caption"] for b in resumed] == full[start:]
    for a, b in zip(full_images[start:], resumed):
        assert torch.equal(a, b["image"])  # augmentation too, not only the sample order


@pytest.mark.parametrize("loader_workers,start", [(0, 4), (2, 3), (3, 0), (3, 8)])
def test_one_loader_over_several_epochs_yields_each_epochs_batches_in_order(shards, loader_workers, start):
    """The engine's single loader for the rest of a run (its workers are never restarted between
    epochs) serves exactly the batches of one loader per epoch, from a mid-epoch start."""
    spec = _spec(shards, epoch_samples=8 * 13)  # 13 batches: lanes and epochs do not line up
    one_each = [b for e in (2, 3, 4) for b in train_loader(spec, loader_workers, epoch=e, start=start if e == 2 else 0)]
    spanning = list(train_loader(spec, loader_workers, epoch=2, start=start, epochs=3))
    assert len(spanning) == len(one_each) == 3 * 13 - start
    assert [b["caption"] for b in spanning] == [b["caption"] for b in one_each]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(spanning, one_each))


@pytest.mark.parametrize("world,loader_workers", [(1, 0), (2, 2), (4, 3)])
def test_epoch_has_exactly_the_stated_number_of_batches(shards, world, loader_workers):
    per_rank = []
    for rank in range(world):
        spec = _spec(shards, world_size=world, rank=rank, epoch_samples=100)
        batches = list(train_loader(spec, loader_workers))
        assert all(b["image"].shape == (8, 3, 32, 32) and b["text"].shape == (8, 12) for b in batches)
        per_rank.append(len(batches))
    # ceil(100 / (8 * world)) batches on every rank, whatever the number of loader workers
    assert per_rank == [-(-100 // (8 * world))] * world


def test_ranks_and_epochs_read_different_streams(shards):
    def captions(rank, epoch):
        stream = TrainStream(_spec(shards, world_size=2, rank=rank), epoch)
        return [c for b in stream for c in b["caption"]]

    r0, r1, r0_next = captions(0, 0), captions(1, 0), captions(0, 1)
    assert r0 != r1 and r0 != r0_next
    assert r0 == captions(0, 0)  # deterministic for a (seed, epoch, rank)


def _flat_png(rgb, size=40) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), rgb).save(buf, format="PNG")  # lossless: exact pixel values
    return buf.getvalue()


def test_images_are_normalised_tensors(shards, tmp_path):
    import io

    from data.loading.pixels import MEAN, STD
    from data.loading.shard_reading import eval_batches

    batch = next(iter(TrainStream(_spec(shards))))
    x = batch["image"]
    assert x.dtype == torch.float32 and -3 < x.mean() < 3 and x.std() > 0.1
    assert (batch["text"][:, 0] == 49406).all()  # start token
    # exact values: flat-colour images (crop, resize and flip leave them flat), no colour jitter:
    # every pixel of channel c is (value / 255 - MEAN[c]) / STD[c], in [B, 3, H, W] order
    colours = {f"c{i}": (17 * i, 250 - 23 * i, 60 + 11 * i) for i in range(10)}
    path = tmp_path / "flat-000000.tar"
    with tarfile.open(path, "w") as tar:
        for key, rgb in colours.items():
            for ext, payload in (("jpg", _flat_png(rgb)), ("txt", key.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))

    def expected(key):
        v = (np.array(colours[key], dtype=np.float32) / 255 - MEAN) / STD
        return torch.from_numpy(v)[:, None, None].expand(3, 32, 32)

    spec = _spec([str(path)], color_jitter=0.0, hflip=True, epoch_samples=16, shuffle_buffer=8)
    for b in train_loader(spec, 0):
        assert b["image"].shape == (8, 3, 32, 32)
        for img, key in zip(b["image"], b["caption"]):
            torch.testing.assert_close(img, expected(key), rtol=0, atol=1e-5)
    for images, items in eval_batches([str(path)], 4, 32):  # the centre-crop path
        for img, item in zip(images, items):
            torch.testing.assert_close(img, expected(item["key"]), rtol=0, atol=1e-5)
    # a patterned image at the eval size (centre crop = the whole image): pixel (y, x) of channel
    # c is at [c, y, x]
    from PIL import Image

    blocks = image_bytes(7, size=(32, 32), fmt="PNG")
    with tarfile.open(tmp_path / "blocks.tar", "w") as tar:
        info = tarfile.TarInfo("b.jpg")
        info.size = len(blocks)
        tar.addfile(info, io.BytesIO(blocks))
    pixels = np.asarray(Image.open(io.BytesIO(blocks)).convert("RGB"), dtype=np.float32)
    want = torch.from_numpy(((pixels / 255 - MEAN) / STD).transpose(2, 0, 1))
    ((images, _),) = eval_batches([str(tmp_path / "blocks.tar")], 4, 32)
    torch.testing.assert_close(images[0], want, rtol=0, atol=1e-5)


def test_eval_reads_every_sample_once_in_order(shards):
    keys = [s["key"] for s in eval_samples(shards)]
    assert len(keys) == 100 and len(set(keys)) == 100 and keys[0] == "s0_0"


def test_alt_captions_are_sampled_at_the_stated_rate():
    import random

    from data.loading.loader import pick_caption

    sample = {"txt": b"main", "json": json.dumps({"alt_captions": ["alt one", "alt two"]}).encode()}
    rng = random.Random(0)
    picks = [pick_caption(sample, 0.5, rng) for _ in range(4000)]
    assert abs(picks.count("main") / 4000 - 0.5) < 0.03
    assert abs(picks.count("alt one") - picks.count("alt two")) < 200
    assert {pick_caption(sample, 0.0, rng) for _ in range(50)} == {"main"}
    assert pick_caption({"txt": b"only"}, 1.0, rng) == "only"


def test_image_only_batches_with_labels(tmp_path):
    import io

    from data.loading.pixels import MEAN, STD

    path = tmp_path / "train-000000.tar"
    red, blue = (200, 40, 40), (40, 40, 200)  # every cat image is red, every dog image blue
    with tarfile.open(path, "w") as tar:  # no captions: an image-only shard
        for i in range(12):
            for ext, payload in (
                ("jpg", _flat_png(red if i % 3 else blue)),
                ("json", json.dumps({"folder": "cat" if i % 3 else "dog"}).encode()),
            ):
                info = tarfile.TarInfo(f"k{i}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    spec = _spec(
        [str(path)],
        context_length=0,
        label_field="folder",
        classes=("cat", "dog"),
        batch_size=4,
        epoch_samples=12,
        shuffle_buffer=4,
        hflip=True,
    )
    batches = list(train_loader(spec, 0))
    assert len(batches) == 3 and set(batches[0]) == {"image", "label", "skipped"}
    labels = torch.cat([b["label"] for b in batches])
    assert labels.dtype == torch.long and set(labels.tolist()) <= {0, 1} and 1 in labels.tolist()
    # each label is its own image's: red (cat, 0) or blue (dog, 1), through jitter and flips
    rgb = torch.cat([b["image"] for b in batches]).mean(dim=(2, 3)) * torch.from_numpy(STD) + torch.from_numpy(MEAN)
    assert labels.tolist() == (rgb[:, 2] > rgb[:, 0]).long().tolist()
    with pytest.raises(ValueError, match="label field 'folder' is 'dog', not one of the 1 classes"):
        list(
            train_loader(
                _spec(
                    [str(path)],
                    context_length=0,
                    label_field="folder",
                    classes=("cat",),
                    batch_size=4,
                    epoch_samples=12,
                    shuffle_buffer=4,
                ),
                0,
            )
        )


def test_corrupt_and_truncated_shards_are_skipped_and_counted(tmp_path, monkeypatch):
    import data.loading.loader as loader

    urls = _write_shards(tmp_path, 3, 20)
    whole = Path(urls[1]).read_bytes()
    Path(urls[1]).write_bytes(whole[: len(whole) // 2])  # truncated mid-sample
    bad_image = tmp_path / "train-000003.tar"  # a shard with undecodable images
    with tarfile.open(bad_image, "w") as tar:
        import io

        for i in range(5):
            for ext, payload in (("jpg", b"\xff\xd8 not a jpeg" * 10), ("txt", b"broken")):
                info = tarfile.TarInfo(f"bad{i}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (tmp_path / "train-000004.tar").write_bytes(b"this is not a tar file at all" * 50)
    all_urls = [*urls, str(bad_image), str(tmp_path / "train-000004.tar")]
    # what one read of each shard gives, read as the loader reads it: shard-level errors (the
    # handler's calls) and samples without an image or a caption; known from how they were made
    per_read = {}
    for url in all_urls:
        errors = []
        got = list(loader.shard_samples(iter([{"url": url}]), lambda e: errors.append(e) or True))
        per_read[url] = (sum("jpg" not in x or "txt" not in x for x in got), len(errors))
    assert per_read == {
        urls[0]: (0, 0),
        urls[1]: (1, 1),
        urls[2]: (0, 0),
        all_urls[3]: (0, 0),
        all_urls[4]: (0, 1),
    }  # the truncated one: its cut sample, one shard error
    # record what the loader drew and which images failed to decode (both call through)
    draws, failed_decodes = [], []
    real_shards, real_decode = TrainStream._shards, loader.open_image

    def recording_shards(self, rng):
        for shard in real_shards(self, rng):
            draws.append(shard["url"])
            yield shard

    def counting_decode(data):
        try:
            return real_decode(data)
        except Exception:
            failed_decodes.append(data)
            raise

    monkeypatch.setattr(TrainStream, "_shards", recording_shards)
    monkeypatch.setattr(loader, "open_image", counting_decode)

    spec = _spec(all_urls, epoch_samples=8 * 30)
    batches = list(train_loader(spec, 0))
    assert len(batches) == 30 and all(b["image"].shape == (8, 3, 32, 32) for b in batches)
    assert all(not c.startswith("broken") for b in batches for c in b["caption"])
    corrupt = sum(b["skipped"][0] for b in batches)
    shard_errors = sum(b["skipped"][1] for b in batches)
    assert corrupt >= 5  # a read of the bad-image shard: 5
    assert shard_errors >= 2  # the non-tar shard, read twice or more
    # exactly: every draw but the last was read to its end (the next shard is drawn only then);
    # corrupt = images that failed to decode + incomplete samples of those reads
    assert set(all_urls[1:]) <= set(draws[:-1]), draws
    assert len(failed_decodes) <= 5 * draws.count(str(bad_image))
    assert all(d.startswith(b"\xff\xd8 not a jpeg") for d in failed_decodes)
    done = [sum(per_read[u][i] for u in draws[:-1]) for i in (0, 1)]
    last = per_read[draws[-1]]  # the draw in progress: partly counted
    assert (corrupt, shard_errors) in {
        (len(failed_decodes) + done[0], done[1]),
        (len(failed_decodes) + done[0] + last[0], done[1] + last[1]),
    }, (corrupt, shard_errors, len(failed_decodes), done, draws)


@pytest.mark.parametrize("cut", ["in a header", "inside a member"])
def test_a_truncated_shard_read_counts_as_one_shard_error(tmp_path, monkeypatch, cut):
    import io

    url = _write_shards(tmp_path, 1, 20)[0]
    whole = Path(url).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        jpg, txt = tar.getmember("s0_10.jpg"), tar.getmember("s0_10.txt")
    end = txt.offset + 100 if cut == "in a header" else jpg.offset_data + jpg.size // 2
    Path(url).write_bytes(whole[:end])
    draws = []
    real_shards = TrainStream._shards

    def recording_shards(self, rng):
        for shard in real_shards(self, rng):
            draws.append(shard["url"])
            yield shard

    monkeypatch.setattr(TrainStream, "_shards", recording_shards)
    batches = list(train_loader(_spec([url], epoch_samples=8 * 10, shuffle_buffer=8), 0))
    shard_errors = sum(b["skipped"][1] for b in batches)
    # every read but the last ran into the cut (the last one may have, too)
    assert len(draws) > 3 and shard_errors in (len(draws) - 1, len(draws)), (shard_errors, len(draws))


def test_a_training_set_of_only_broken_shards_fails_clearly(tmp_path):
    junk = tmp_path / "train-000000.tar"
    junk.write_bytes(b"junk" * 100)
    with pytest.raises(RuntimeError, match="shard reads in a row failed"):
        list(train_loader(_spec([str(junk)], epoch_samples=16), 0))


def test_shuffle_buffer_grows_to_its_size(tmp_path):
    # shards of 100 consecutive samples; a buffer that really holds 300 mixes all three shards
    # into later batches (a buffer stuck at a few batches would give one or two per batch)
    urls = _write_shards(tmp_path, 3, 100)
    spec = _spec(urls, epoch_samples=8 * 50, shuffle_buffer=300)
    batches = list(train_loader(spec, 0))
    shards_per_batch = [len({c.split()[1].split("_")[0] for c in b["caption"]}) for b in batches[30:]]
    assert max(shards_per_batch) == 3 and sum(n == 3 for n in shards_per_batch) >= 5, shards_per_batch


def _photo_like(w: int, h: int, seed: int) -> bytes:
    """A smooth, photo-like JPEG of w x h (blurred, upsampled noise)."""
    import io

    from PIL import Image, ImageFilter

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 24), max(2, w // 24), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("w,h", [(72, 72), (96, 80), (256, 256), (300, 200), (640, 480), (1024, 1024)])
def test_the_loader_and_evaluation_see_a_full_size_decode_cropped_and_resized(w, h):
    # the loader's pixels for a sample = its full-resolution decode, cut at the same box (drawn from
    # the sample's own RNG in full-size pixels) and resized; evaluation's = the centred square of it.
    # A large JPEG may decode at a DCT scale, never below twice the output's size: the difference
    # stays within JPEG rounding (a few levels of 255; a q90 JPEG's own error is larger); an image
    # under four times the output's size decodes whole: the same pixels
    import io
    import random

    from PIL import Image

    from data.loading.pixels import MEAN, STD, eval_pixels, random_box

    blob = _photo_like(w, h, seed=w * h)
    full = Image.open(io.BytesIO(blob)).convert("RGB")
    spec = _spec(["unused.tar"], color_jitter=0.0, hflip=False, context_length=0)
    stream = TrainStream(spec)
    worst, total = 0.0, 0.0
    for k in range(12):
        seed = (0, 1, 0, 0, k)
        got, _, _ = stream._decode({"jpg": blob}, seed, {})
        box = random_box(w, h, spec.scale, spec.ratio, random.Random(hash(seed) & 0xFFFFFFFF))
        want = np.asarray(full.resize((32, 32), Image.Resampling.BILINEAR, box=box), dtype=np.float32)
        diff = np.abs((got.transpose(1, 2, 0) * STD + MEAN) * 255 - want)
        worst, total = max(worst, float(diff.max())), total + float(diff.mean()) / 12
    s = min(w, h)
    centre = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    want = np.asarray(full.resize((32, 32), Image.Resampling.BILINEAR, box=centre), dtype=np.float32)
    eval_diff = np.abs((eval_pixels(blob, 32).transpose(1, 2, 0) * STD + MEAN) * 255 - want)
    if min(w, h) < 4 * 32:  # no DCT scaling: the same pixels, to float rounding
        assert worst < 0.01 and eval_diff.max() < 0.01, (worst, eval_diff.max())
    else:
        assert worst <= 6 and total < 1.0 and eval_diff.max() <= 6, (worst, total, eval_diff.max())
