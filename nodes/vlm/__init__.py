"""Vision-language models behind one small interface, so a node asks for text and does not care whether a
local Hugging Face checkpoint or an OpenAI-compatible server (vLLM, llama.cpp) answers."""
from nodes.vlm.adapter import SharedVlm, VlmAdapter, VlmError, load_vlm

__all__ = ["SharedVlm", "VlmAdapter", "VlmError", "load_vlm"]
