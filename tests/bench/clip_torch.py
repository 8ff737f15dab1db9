"""The PyTorch half of tests/bench/clip_cpu.sh: transformers' CLIP image tower on the CPU.

  clip_torch.py model GEOMETRY DIR TOKENIZER   random weights of a geometry (b32, l14-336) saved in DIR as a
                                               Hugging Face CLIP folder (config.json, model.safetensors, and a
                                               copy of TOKENIZER), which dsmake loads as `model_path`
  clip_torch.py pixels DIR BATCH OUT.npy       a seeded random batch of preprocessed pixels, float32
                                               [BATCH, 3, size, size], size from DIR's config
  clip_torch.py bench DIR PIXELS.npy ITERS THREADS [THEIRS.npy]
                                               CLIPVisionModelWithProjection in fp32 under inference_mode,
                                               THREADS intra-op threads: one warm-up pass, then ITERS timed
                                               passes over the batch; prints one JSON line, with the smallest
                                               cosine between its embeddings and THEIRS (the other
                                               implementation's on the same pixels) row by row
"""

import json
import os
import shutil
import sys
import time

import numpy as np
import torch
from transformers import CLIPConfig, CLIPModel, CLIPVisionModelWithProjection
from transformers.utils import logging

# Quiet: no progress bars, nor the list of text-tower weights that the image tower leaves unused.
logging.set_verbosity_error()
logging.disable_progress_bar()

# OpenAI's geometries (the fields transformers' CLIPConfig defaults leave to set).
GEOMETRIES = {
    "b32": dict(
        projection_dim=512,
        text=dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12),
        vision=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                    image_size=224, patch_size=32),
    ),
    "l14-336": dict(
        projection_dim=768,
        text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
        vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                    image_size=336, patch_size=14),
    ),
}


def make_model(geometry: str, out: str, tokenizer: str) -> None:
    g = GEOMETRIES[geometry]
    config = CLIPConfig(
        text_config=dict(g["text"], hidden_act="quick_gelu"),
        vision_config=dict(g["vision"], hidden_act="quick_gelu"),
        projection_dim=g["projection_dim"],
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()  # transformers' own initialisation: not degenerate, unlike zeros
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    shutil.copy(tokenizer, os.path.join(tmp, "tokenizer.json"))
    os.replace(tmp, out)  # a folder that exists is complete: the shell script reuses it


def make_pixels(model_dir: str, batch: int, out: str) -> None:
    size = CLIPConfig.from_pretrained(model_dir).vision_config.image_size
    rng = np.random.default_rng(7)
    np.save(out, rng.uniform(-2.0, 2.0, (batch, 3, size, size)).astype(np.float32))


def bench(model_dir: str, pixels: str, iters: int, threads: int, theirs: str | None) -> None:
    torch.set_num_threads(threads)
    # The projection's width is CLIPConfig's projection_dim, as CLIPModel and dsmake read it; the vision
    # sub-config's own projection_dim is a default that some folders (the tiny fixture) leave at 512.
    config = CLIPConfig.from_pretrained(model_dir)
    config.vision_config.projection_dim = config.projection_dim
    model = CLIPVisionModelWithProjection.from_pretrained(model_dir, config=config.vision_config, dtype=torch.float32)
    model.eval()
    x = torch.from_numpy(np.load(pixels))
    with torch.inference_mode():
        mine = model(pixel_values=x).image_embeds.numpy()  # warm-up, and the embeddings to compare
        started = time.perf_counter()
        for _ in range(iters):
            model(pixel_values=x)
        seconds = time.perf_counter() - started
    line = {
        "bench": "clip image tower",
        "impl": f"torch {torch.__version__} transformers CLIPVisionModelWithProjection",
        "attention": model.config._attn_implementation,
        "threads": torch.get_num_threads(),
        "batch": len(x),
        "images": len(x) * iters,
        "seconds": round(seconds, 3),
        "images_per_s": round(len(x) * iters / seconds, 2),
    }
    if theirs:
        other = np.load(theirs).astype(np.float32)
        assert other.shape == mine.shape, (other.shape, mine.shape)
        cos = (mine * other).sum(1) / (np.linalg.norm(mine, axis=1) * np.linalg.norm(other, axis=1))
        line["cosine_min"] = round(float(cos.min()), 6)
    print(json.dumps(line))


def main() -> None:
    command, args = sys.argv[1], sys.argv[2:]
    if command == "model":
        make_model(args[0], args[1], args[2])
    elif command == "pixels":
        make_pixels(args[0], int(args[1]), args[2])
    elif command == "bench":
        bench(args[0], args[1], int(args[2]), int(args[3]), args[4] if len(args) > 4 else None)
    else:
        sys.exit(f"unknown command {command!r}: expected model, pixels or bench")


if __name__ == "__main__":
    main()
