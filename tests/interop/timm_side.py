"""Run by the interop environment's python (timm; not the project's):

python timm_side.py embed <folder> <inputs.npz> <out.npz>
    load an exported folder with timm (local-dir:, pretrained=True) and embed the pixels
python timm_side.py make <folder> <config.json> <inputs.npz> <out.npz>
    build the ViT of that config with timm's own random initialisation, its position table set
    to the given fixed one (as MAE checkpoints carry it), save it as a local-dir folder, embed
"""

import json
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import save_file


def main(argv):
    mode, folder = argv[0], Path(argv[1])
    inputs = np.load(argv[-2])
    if mode == "make":
        cfg = json.loads(Path(argv[2]).read_text())
        torch.manual_seed(0)
        model = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"])
        with torch.no_grad():
            model.pos_embed.copy_(torch.from_numpy(inputs["pos"]))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(cfg))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(inputs["pixels"]))
        pooled = model.forward_head(tokens, pre_logits=True)
        out = model(torch.from_numpy(inputs["pixels"]))
    np.savez(
        argv[-1],
        tokens=tokens.numpy(),
        pooled=pooled.numpy(),
        out=out.numpy(),
        data_config=np.array(json.dumps(timm.data.resolve_data_config({}, model=model))),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
