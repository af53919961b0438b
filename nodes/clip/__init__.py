"""A small CLIP for the offline-video prescan: config, tokenizer and image preprocessing, training on
shapes-world frames, ONNX export, a torch/ONNX embedder and an on-disk cache of frame embeddings.

The model is a transformers `CLIPModel`, so any local Hugging Face CLIP checkpoint serves the same
embedder; ours is only the default that ships after `groundloop train clip`.
"""
