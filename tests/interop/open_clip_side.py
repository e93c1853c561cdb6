"""Run by the interop environment's python (open_clip, timm, torchvision; not the project's):

python open_clip_side.py embed <folder> <inputs.npz> <out.npz>
    load an exported folder with open_clip (local-dir:), tokenize the captions with its
    tokenizer, embed the given pixels and token ids
python open_clip_side.py images <folder> <image file>... <out.npz>
    load an exported folder with open_clip and embed each image file through open_clip's own
    preprocessing (PIL decode, its transforms), L2-normalised
python open_clip_side.py make <folder> <model_cfg.json> <inputs.npz> <out.npz>
    build a model of that config with open_clip's own random initialisation, save it as a
    local-dir folder, and embed the inputs with it
"""

import json
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file


def embed(model, tokenizer, inputs):
    captions = [str(c) for c in inputs["captions"]]
    ids = tokenizer(captions)
    with torch.no_grad():
        img = model.encode_image(torch.from_numpy(inputs["pixels"]), normalize=False)
        txt = model.encode_text(torch.from_numpy(inputs["ids"]), normalize=False)
    out = {
        "ids": ids.numpy(),
        "image": img.numpy(),
        "text": txt.numpy(),
        "logit_scale": np.array(float(model.logit_scale)),
    }
    if getattr(model, "logit_bias", None) is not None:
        out["logit_bias"] = np.array(float(model.logit_bias))
    return out


def images(folder, out, paths):
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    pixels = torch.stack([preprocess(Image.open(p)) for p in paths])
    with torch.no_grad():
        emb = model.encode_image(pixels, normalize=True)
    np.savez(out, image=emb.numpy(), preprocess=np.array(str(preprocess)))


def main(argv):
    mode, folder = argv[0], Path(argv[1])
    if mode == "images":
        return images(folder, argv[-1], argv[2:-1])
    if mode == "make":
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": json.loads(Path(argv[2]).read_text())}))
        torch.manual_seed(0)
        model = open_clip.create_model(f"local-dir:{folder}")  # no weights yet: open_clip's own init
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors")
        )
        argv = argv[1:]
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    out = embed(model, open_clip.get_tokenizer(f"local-dir:{folder}"), np.load(argv[2]))
    out["preprocess"] = np.array(str(preprocess))
    np.savez(argv[3], **out)


if __name__ == "__main__":
    main(sys.argv[1:])
