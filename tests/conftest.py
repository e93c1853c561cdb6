import io
import json
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from tests.servers import free_port

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
CLIP_SMALL = Path(__file__).resolve().parents[1] / "configs/clip_small.yaml"


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto) on 127.0.0.1; the standard AWS variables point at it.
    Started before Ray, so Ray's workers inherit the variables."""
    from moto.server import ThreadedMotoServer

    port = free_port()

    class Server:
        url = f"http://127.0.0.1:{port}"

        def start(self):
            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            self.moto.start()

        def stop(self):  # the data stays: moto keeps it in this process, like a restarted real server
            self.moto.stop()

    server = Server()
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=server.url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_local(s3_server):
    """One local Ray instance for the whole session (starting Ray costs seconds)."""
    import ray

    from infra.ray_cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


TINY_STEPS = 20  # steps of the tiny CLIP runs below: checkpoints at 5, 10, 15, 20


@pytest.fixture(scope="session")
def tiny_manifest(ray_local, tmp_path_factory):
    """400 demo samples sharded for the tiny CLIP runs of the training tests."""
    from data.writing.sharder import shard_dataset
    from pipelines.config import load_recipe

    out = tmp_path_factory.mktemp("tiny") / "shards"
    recipe = load_recipe(CLIP_SMALL, ["data.limit=400", "data.shard_samples=100"])
    shard_dataset(recipe.data, out)
    return out / "manifest.json"


# open_clip and timm need torchvision, which does not import beside the project's CPU torch: their
# tests run them in a second environment with the CUDA builds (which run on the CPU)
INTEROP = ("torch==2.14.1", "torchvision==0.29.1", "open_clip_torch==3.3.0", "timm==1.0.31", "safetensors==0.8.0")


@pytest.fixture(scope="session")
def interop_python():
    """The python of that environment, built once into the cache (about 1 minute and 5.6 GB here)."""
    import hashlib
    import shutil
    import subprocess
    import sys

    from infra.cache import cache_dir

    venv = cache_dir() / f"venv-interop-{hashlib.sha256(' '.join(INTEROP).encode()).hexdigest()[:8]}"
    py = venv / "bin" / "python"
    if not (venv / ".done").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *INTEROP], check=True)
        (venv / ".done").touch()
    return py


def run_interop(python, script, *args) -> dict:
    """Run tests/interop/<script> with the interop python; its output: the .npz named last."""
    import subprocess

    import numpy as np

    done = subprocess.run(
        [str(python), str(Path(__file__).parent / "interop" / script), *map(str, args)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(args[-1]))


@pytest.fixture(scope="session")
def train_tiny(tiny_manifest):
    """train(out_dir, *overrides, **run_pretrain keywords): a 20-step CLIP run of 2 workers x 16,
    returns run_pretrain's result plus "losses" (rank 0's loss at every step)."""
    from pipelines.config import load_recipe
    from training.pretrain import run_pretrain

    def train(out_dir, *overrides, **kwargs):
        recipe = load_recipe(
            CLIP_SMALL,
            [
                "train.batch_size=16",
                "train.epochs=1",
                f"train.epoch_samples={32 * TINY_STEPS}",
                "train.checkpoint_every=5",
                "train.log_every=5",
                "train.warmup_steps=3",
                "train.max_failures=1",
                "model.vision_layers=1",
                "model.text_layers=1",
                "model.vision_width=64",
                "model.text_width=64",
                "model.embed_dim=64",
                "model.context_length=16",
                *overrides,
            ],
        )
        out = run_pretrain(recipe, tiny_manifest, out_dir, **kwargs)
        out["losses"] = json.loads(Path(out["loss_history"]).read_text())
        return out

    return train


@pytest.fixture(scope="session")
def tiny_ddp_run(train_tiny, tmp_path_factory):
    """The uninterrupted DDP run the fault tests compare their loss curves with."""
    return train_tiny(tmp_path_factory.mktemp("ddp"))


def image_bytes(seed: int, size=(96, 80), fmt="JPEG") -> bytes:
    """A distinct, decodable image: random coloured blocks."""
    rng = random.Random(seed)
    img = Image.new("RGB", size)
    for x in range(0, size[0], 16):
        for y in range(0, size[1], 16):
            img.paste((rng.randrange(256), rng.randrange(256), rng.randrange(256)), (x, y, x + 16, y + 16))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


GOOD = 12


@pytest.fixture()
def messy_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(GOOD):
        (src / f"good{i:02d}.jpg").write_bytes(image_bytes(i))
        (src / f"good{i:02d}.txt").write_text(f"a picture number {i}")
    (src / "png_meta.png").write_bytes(image_bytes(100, fmt="PNG"))
    (src / "png_meta.json").write_text(json.dumps({"caption": "a png with metadata", "label": "x"}))
    (src / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 20)
    whole = image_bytes(200, size=(160, 160))
    (src / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (src / "truncated.txt").write_text("half an image")
    (src / "corrupt.txt").write_text("garbage")
    (src / "nocaption.jpg").write_bytes(image_bytes(300))
    (src / "dup.jpg").write_bytes(image_bytes(3))  # same bytes as good03, which comes later in order
    (src / "dup.txt").write_text("a copy")
    (src / "tiny.jpg").write_bytes(image_bytes(400, size=(8, 8)))
    (src / "tiny.txt").write_text("too small")
    (src / "blank.jpg").write_bytes(image_bytes(500))
    (src / "blank.txt").write_text("   \n ")
    (src / "long.jpg").write_bytes(image_bytes(600))
    (src / "long.txt").write_text("word " * 200)
    return src
