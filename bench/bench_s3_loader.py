"""Loader samples/s streaming shards from S3 (a moto server on loopback) vs from local disk,
same shards, same run. Needs no AWS account: the server is started here."""

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    from data.loading.loader import LoaderSpec, train_loader
    from data.writing.sharder import shard_dataset, shard_urls
    from infra.ray_cluster import init_ray
    from infra.storage import s3_client
    from pipelines.config import load_recipe

    recipe = load_recipe(Path(__file__).resolve().parents[1] / "configs/clip_small.yaml", sys.argv[1:])
    init_ray()
    s3_client().create_bucket(Bucket="bench")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.time()
        shard_dataset(recipe.data, Path(tmp) / "shards")
        t_local = time.time() - t
        t = time.time()
        shard_dataset(recipe.data, "s3://bench/shards")
        t_s3 = time.time() - t
        print(f"sharding: local {t_local:.1f}s, into S3 {t_s3:.1f}s")
        import ray

        ray.shutdown()
        m, tr = recipe.model, recipe.train
        for label, urls in (
            ("local disk", shard_urls(Path(tmp) / "shards" / "manifest.json", "train")),
            ("S3 (moto, loopback)", shard_urls("s3://bench/shards/manifest.json", "train")),
        ):
            for workers in (1, 2):
                spec = LoaderSpec(
                    urls=tuple(urls),
                    batch_size=tr.batch_size,
                    image_size=m.image_size,
                    context_length=m.context_length,
                    epoch_samples=tr.batch_size * 40,
                    shuffle_buffer=tr.shuffle_buffer,
                )
                it = iter(train_loader(spec, workers))
                next(it)
                start, n = time.time(), 0
                for batch in it:
                    n += batch["image"].shape[0]
                print(f"loader from {label}, {workers} workers: {n / (time.time() - start):.0f} samples/s")
    server.stop()


if __name__ == "__main__":
    main()
