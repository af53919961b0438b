"""A local Hugging Face vision-language checkpoint as a VlmAdapter: Qwen2.5-VL (and Qwen2-VL), LLaVA, and
other image-text-to-text models whose processor loads with `AutoProcessor`.

Nothing downloads: every load passes `local_files_only=True`, and a missing directory is an error that
names it and the command that fetches one. torchvision is not required: the Qwen processor cannot be
built without it (its video processor needs torchvision), so for Qwen the prompt is assembled here from
the tokenizer, its chat template and the PIL image processor, with each `<|image_pad|>` expanded to
the number of merged patches the image processor reports (prod(image_grid_thw) / merge_size²), which
is what the Qwen processor itself does. Other architectures (LLaVA) go through `AutoProcessor`, whose
image processor falls back to the PIL backend when torchvision is absent.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nodes.model_dir import DEVICE_AUTO, resolve_device
from nodes.vlm.adapter import VlmAdapter, VlmError, check_generate_args

QWEN_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")
QWEN_IMAGE_PAD = "<|image_pad|>"
QWEN_IMAGE_SLOT = "<|vision_start|><|image_pad|><|vision_end|>"
#: Qwen's chat format, for checkpoints whose tokenizer carries no chat template
QWEN_CHAT_FORMAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n{image_slots}{prompt}<|im_end|>\n<|im_start|>assistant\n")
CONFIG_FILE = "config.json"
TRAIN_COMMAND = "groundloop train vlm --clip models/clip_shapes --out {path}"  # the project's own small VLM
FETCH_COMMAND = "hf download Qwen/Qwen2.5-VL-3B-Instruct --local-dir {path}"  # or a real one, fetched once
DTYPE_AUTO = "auto"
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")  # per token, not per image


def chat_messages(n_images: int, prompt: str) -> list[dict[str, Any]]:
    """One user turn: the images first, then the prompt (the order the Qwen and LLaVA recipes train on)."""
    return [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": prompt}]}]


def expand_image_pads(text: str, pads_per_image: list[int]) -> str:
    """`text` with its i-th `<|image_pad|>` repeated `pads_per_image[i]` times."""
    pieces = text.split(QWEN_IMAGE_PAD)
    if len(pieces) != len(pads_per_image) + 1:
        raise VlmError(f"the chat template made {len(pieces) - 1} image slots for {len(pads_per_image)} images")
    out = [pieces[0]]
    for count, piece in zip(pads_per_image, pieces[1:]):
        out += [QWEN_IMAGE_PAD * count, piece]
    return "".join(out)


class QwenInputs:
    """Model inputs for Qwen2(.5)-VL without the Qwen processor (which needs torchvision)."""

    def __init__(self, checkpoint: Path):
        from transformers import AutoImageProcessor, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
        self.image_processor = AutoImageProcessor.from_pretrained(checkpoint, local_files_only=True)

    def chat_text(self, n_images: int, prompt: str) -> str:
        if self.tokenizer.chat_template:
            messages = chat_messages(n_images, prompt)
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return QWEN_CHAT_FORMAT.format(image_slots=QWEN_IMAGE_SLOT * n_images, prompt=prompt)

    def encode(self, images: list[np.ndarray], prompt: str) -> dict[str, Any]:
        text = self.chat_text(len(images), prompt)
        vision: dict[str, Any] = {}
        if images:
            pixels = self.image_processor(images=images, return_tensors="pt")
            merged_patch = self.image_processor.merge_size ** 2
            text = expand_image_pads(text, (pixels["image_grid_thw"].prod(-1) // merged_patch).tolist())
            vision = {"pixel_values": pixels["pixel_values"], "image_grid_thw": pixels["image_grid_thw"]}
        return {**self.tokenizer(text, return_tensors="pt"), **vision}


class ProcessorInputs:
    """Model inputs through the checkpoint's own processor and chat template (LLaVA and the like)."""

    def __init__(self, checkpoint: Path):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(checkpoint, local_files_only=True)
        self.tokenizer = self.processor.tokenizer
        if not self.processor.chat_template:
            raise ValueError(f"{checkpoint}: the processor has no chat template (chat_template.jinja): cannot build prompts")

    def encode(self, images: list[np.ndarray], prompt: str) -> dict[str, Any]:
        text = self.processor.apply_chat_template(chat_messages(len(images), prompt), tokenize=False, add_generation_prompt=True)
        return dict(self.processor(images=images or None, text=text, return_tensors="pt"))


def resolve_dtype(dtype: str, device: Any) -> Any:
    import torch

    if dtype == DTYPE_AUTO:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


class HfVlmAdapter(VlmAdapter):
    """A checkpoint directory loaded once; `generate` runs the model in-process."""

    def __init__(self, path: str | Path, *, device: str = DEVICE_AUTO, dtype: str = DTYPE_AUTO):
        from transformers import AutoConfig, AutoModelForImageTextToText

        self.checkpoint = Path(path)
        if not (self.checkpoint / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"no Hugging Face checkpoint at {self.checkpoint} (no {CONFIG_FILE}); nothing is downloaded "
                                    f"at run time: train the project's small VLM with `{TRAIN_COMMAND.format(path=self.checkpoint)}` "
                                    f"or fetch a checkpoint once, e.g. `{FETCH_COMMAND.format(path=self.checkpoint)}`")
        config = AutoConfig.from_pretrained(self.checkpoint, local_files_only=True)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = AutoModelForImageTextToText.from_pretrained(self.checkpoint, local_files_only=True, dtype=self.dtype)
        self.model.to(self.device).eval()
        self.inputs = QwenInputs(self.checkpoint) if config.model_type in QWEN_MODEL_TYPES else ProcessorInputs(self.checkpoint)
        tokenizer = self.inputs.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _on_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        import torch

        return {key: value.to(self.device, dtype=self.dtype if value.is_floating_point() else None)
                if isinstance(value, torch.Tensor) else value for key, value in batch.items()}

    def generate(self, images: list[np.ndarray], prompt: str, *, max_new_tokens: int, n_samples: int = 1,
                 temperature: float = 0.0, seed: int = 0) -> list[str]:
        """Greedy answers are identical, so temperature 0 decodes once and repeats the answer n_samples times;
        sampling draws all n_samples in one call under a forked, seeded torch RNG (the global RNG is untouched)."""
        import torch

        check_generate_args(images, max_new_tokens, n_samples, temperature)
        sampling = temperature > 0.0
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self.pad_token_id, "do_sample": sampling}
        if sampling:
            options.update(temperature=temperature, num_return_sequences=n_samples)
        rng_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            batch = self._on_device(self.inputs.encode(images, prompt))
            with torch.inference_mode(), torch.random.fork_rng(devices=rng_devices):
                torch.manual_seed(seed)
                output = self.model.generate(**batch, **options)
        except VlmError:
            raise
        except Exception as exc:  # noqa: BLE001 — any model failure is a failed call to the caller
            raise VlmError(f"{self.checkpoint}: generation failed: {type(exc).__name__}: {exc}") from exc
        new_tokens = output[:, batch["input_ids"].shape[1]:]
        texts = self.inputs.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return texts if sampling else texts * n_samples

    def score_answers(self, images: list[np.ndarray], prompt: str, answers: Sequence[str]) -> np.ndarray:
        """One forward pass over K rows, each the prompt followed by one answer's tokens and [EOS] (right-
        padded: a causal model's earlier positions never see the padding); the sum of the answer tokens'
        log-probabilities. The images go once per row, which a small vision tower affords."""
        import torch

        check_generate_args(images, 1, 1, 0.0)
        if not answers:
            raise ValueError("score_answers needs at least one answer")
        tokenizer = self.inputs.tokenizer
        end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        replies = [tokenizer(answer, add_special_tokens=False)["input_ids"] + end for answer in answers]
        try:
            encoded = self.inputs.encode(images, prompt)
            prompt_ids = encoded["input_ids"][0]  # (T,)
            n_prompt, longest = len(prompt_ids), max(len(reply) for reply in replies)
            input_ids = torch.full((len(replies), n_prompt + longest), self.pad_token_id, dtype=prompt_ids.dtype)
            attention = torch.zeros_like(input_ids)  # (K, T + A)
            for row, reply in enumerate(replies):
                input_ids[row, :n_prompt] = prompt_ids
                input_ids[row, n_prompt: n_prompt + len(reply)] = torch.tensor(reply, dtype=prompt_ids.dtype)
                attention[row, : n_prompt + len(reply)] = 1
            vision = {key: torch.cat([value] * len(replies)) for key, value in encoded.items()
                      if key not in TEXT_INPUTS and isinstance(value, torch.Tensor)}
            batch = self._on_device({"input_ids": input_ids, "attention_mask": attention, **vision})
            with torch.inference_mode():  # the logits that predict each answer token: positions T−1 … T+A−2
                logits = self.model(**batch, logits_to_keep=longest + 1).logits[:, :-1].float()  # (K, A, V)
        except Exception as exc:  # noqa: BLE001 — any model failure is a failed call to the caller
            raise VlmError(f"{self.checkpoint}: scoring answers failed: {type(exc).__name__}: {exc}") from exc
        log_probs = torch.log_softmax(logits, -1).cpu()  # (K, A, V)
        return np.array([float(log_probs[row, torch.arange(len(reply)), torch.tensor(reply)].sum())
                         for row, reply in enumerate(replies)], np.float64)

    def close(self) -> None:
        self.model = None
