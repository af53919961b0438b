"""Tiny random-weight CLIPs and a tiny shapes-world clip, built offline for the CLIP and prescan tests.

`build_tiny_clip` goes through the product's own path (our tokenizer, `build_model`, `save_model_dir`);
`build_hf_clip` is a plain Hugging Face checkpoint that is not ours (a character tokenizer, OpenAI's
mean/std, a resize-then-crop preprocessor), to show the embedder is not tied to our format.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nodes.clip.config import ClipShapesConfig
from nodes.clip.model import build_model, save_model_dir
from nodes.clip.processing import build_tokenizer
from sim.shapes_world.render import write_video
from sim.shapes_world.scene import Scene, SceneConfig, make_scene

TINY_CONFIG = ClipShapesConfig(image_size=32, patch_size=8, vision_layers=2, text_layers=2, width=32, heads=2,
                               projection_dim=32, max_text_len=16, image_mean=(0.12, 0.12, 0.12),
                               image_std=(0.1, 0.1, 0.1))
HF_SPECIAL = ["<pad>", "<|startoftext|>", "<|endoftext|>"]
PRINTABLE = [chr(c) for c in range(32, 127)]
HF_IMAGE_PX, HF_RESIZE_PX = 32, 40
OPENAI_MEAN, OPENAI_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
CLIP_SECONDS, CLIP_FPS, CLIP_SIZE = 4.0, 10, 64


def build_tiny_clip(directory: Path, seed: int = 0) -> Path:
    """Our format, random weights: 32 px, patch 8, 2 + 2 layers of width 32."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(TINY_CONFIG.max_text_len)
    model = build_model(TINY_CONFIG, tokenizer)
    return save_model_dir(model, tokenizer, TINY_CONFIG, directory, {"train": {"note": "random weights (tests)"}})


def build_hf_clip(directory: Path) -> Path:
    """A Hugging Face CLIP directory made with transformers' own classes only."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    vocab = {token: i for i, token in enumerate(HF_SPECIAL + PRINTABLE)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", vocab["<|startoftext|>"]), ("<|endoftext|>", vocab["<|endoftext|>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<|startoftext|>",
                                        eos_token="<|endoftext|>", model_max_length=64)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, pad_token_id=vocab["<pad>"],
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=HF_IMAGE_PX, patch_size=8),
        projection_dim=24)
    torch.manual_seed(1)
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessorPil(size={"shortest_edge": HF_RESIZE_PX}, crop_size={"height": HF_IMAGE_PX, "width": HF_IMAGE_PX},
                          image_mean=OPENAI_MEAN, image_std=OPENAI_STD).save_pretrained(directory)
    return directory


def write_shapes_clip(path: Path, seed: int = 3) -> tuple[Path, Scene]:
    """A 4 s, 10 fps, 64 px shapes-world MP4 and its scripted scene."""
    scene = make_scene(SceneConfig(duration_s=CLIP_SECONDS, fps=CLIP_FPS, width=CLIP_SIZE, height=CLIP_SIZE), seed)
    return write_video(scene, path), scene
