"""Tiny random-weight checkpoints of the real architectures (Qwen2.5-VL, LLaVA), built offline.

No tokenizer ships in any package, so each checkpoint gets a character-level tokenizer trained on
nothing: a WordLevel vocabulary of the model's special tokens plus printable ASCII, wrapped in
PreTrainedTokenizerFast. The Qwen checkpoint gets the PIL image processor (the Qwen processor needs
torchvision); the LLaVA checkpoint a full LlavaProcessor, as real LLaVA checkpoints ship.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>"]
LLAVA_SPECIAL = ["<pad>", "<s>", "</s>", "<image>"]
PRINTABLE = [chr(c) for c in range(32, 127)] + ["\n"]
LLAVA_IMAGE_PX, LLAVA_PATCH_PX = 32, 8
# a trimmed Qwen2.5-VL chat template: what the real one does for one user turn with images and text
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
LLAVA_CHAT_TEMPLATE = (
    "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}")


def char_tokenizer(special: list[str], **special_roles: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(special + PRINTABLE)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special[0]))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    extra = [t for t in special if t not in special_roles.values()]
    return PreTrainedTokenizerFast(tokenizer_object=backend, additional_special_tokens=extra, **special_roles), vocab


def build_tiny_qwen(directory: Path, *, chat_template: str | None) -> Path:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer, vocab = char_tokenizer(QWEN_SPECIAL, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    ids = dict(eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|endoftext|>"], bos_token_id=vocab["<|im_start|>"])
    config = Qwen2_5_VLConfig(
        # mrope_section sums to head_dim / 2 (32 / 2 heads / 2); the vision output matches the text width
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}, **ids),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, fullatt_block_indexes=[0], window_size=56),
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"], vision_end_token_id=vocab["<|vision_end|>"], **ids)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112).save_pretrained(directory)
    return directory


def build_tiny_llava(directory: Path) -> Path:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer, vocab = char_tokenizer(LLAVA_SPECIAL, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=LLAVA_IMAGE_PX, patch_size=LLAVA_PATCH_PX),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1, pad_token_id=vocab["<pad>"],
                                bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"]),
        image_token_index=vocab["<image>"], vision_feature_layer=-1)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(config).save_pretrained(directory)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": LLAVA_IMAGE_PX},
                                            crop_size={"height": LLAVA_IMAGE_PX, "width": LLAVA_IMAGE_PX})
    # CLIP adds a CLS token that the 'default' strategy drops again: one extra, minus one
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=LLAVA_PATCH_PX,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=LLAVA_CHAT_TEMPLATE).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("qwen2_5_vl"), chat_template=QWEN_CHAT_TEMPLATE)


@pytest.fixture(scope="session")
def tiny_qwen_without_template_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen(tmp_path_factory.mktemp("qwen2_5_vl_plain"), chat_template=None)


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("llava"))
