"""The shapes-world VLM as a Hugging Face checkpoint directory, built the LLaVA way from our CLIP.

`build_vlm` takes a trained CLIP directory (`groundloop train clip`), copies its vision tower's
weights into a `LlavaForConditionalGeneration` beside a fresh projector and a small Llama, and
makes the matching `LlavaProcessor`: the CLIP's own image preprocessing (its measured mean/std), a
word-level tokenizer and a chat template. A saved directory loads offline through
`load_vlm({"hf": DIR})` (nodes/vlm/hf.py's LLaVA path) like any LLaVA checkpoint.

The tokenizer extends the CLIP's vocabulary (colours, shapes, a few function words) with every
word of the prompts the nodes send (A.I.R.'s analysis prompt, the answering prompt and its
timeline), the shapes-world questions, the answers (digits, option letters, the score line) and
the chat turn words; it keeps case, so the option letter "A" is not the article "a". Digits are
single tokens, so any clock time or count tokenizes. Any other word becomes [UNK].

A directory holds config.json + model.safetensors, the processor files (tokenizer,
preprocessor_config.json, chat_template.jinja) and `groundloop_vlm.json` (our config and the
training record with the held-out metrics). It is written beside its final place and renamed there.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.air.analysis import ANALYSIS_PROMPT, FRAME_TIME
from nodes.clip.model import require_model_dir
from nodes.model_dir import read_model_meta, write_model_dir
from nodes.clip.processing import BOS, EOS, PAD, SPECIAL_TOKENS, UNK, vocabulary as clip_vocabulary
from nodes.shapes_vlm.config import CLS_TOKENS, FEATURE_STRATEGY, VlmShapesConfig
from nodes.shapes_vlm.data import VOCABULARY_TEXTS
from nodes.video_qa import ANSWER_PROMPT, OPTION_LETTERS, TIMELINE, TIMESTAMP

if TYPE_CHECKING:
    import torch
    from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

MODEL_FORMAT = "groundloop.shapes_vlm/1"
META_FILE = "groundloop_vlm.json"
DEFAULT_MODEL_DIR = "models/vlm_shapes"
DEFAULT_CLIP_DIR = "models/clip_shapes"
IMAGE_TOKEN = "<image>"
USER, ASSISTANT = "USER", "ASSISTANT"
#: one user turn, images first, then the prompt (nodes/vlm/hf.py's `chat_messages`), then the answer cue
CHAT_TEMPLATE = (
    "{% for m in messages %}" + USER + ": {% for c in m['content'] %}{% if c['type'] == 'image' %}" + IMAGE_TOKEN
    + "\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %} " + ASSISTANT
    + ":{% endif %}")
DIGITS = tuple("0123456789")
PLACEHOLDER = re.compile(r"\{[^{}]*\}")  # "{question}", "{:.1f}" in the prompt templates

VISION, PROJECTOR, LM = "vision", "projector", "lm"


def pre_tokenizer() -> Any:
    """Whitespace splits words, each punctuation mark and each digit is a token of its own."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated"),
                                    pre_tokenizers.Digits(individual_digits=True)])


def vocabulary() -> list[str]:
    """The CLIP's special tokens and words first, the image token, then every new word of the texts the
    model reads and writes, in order of first appearance (so the ids never depend on hashing)."""
    split = pre_tokenizer()
    texts = [ANALYSIS_PROMPT, FRAME_TIME, ANSWER_PROMPT, TIMELINE, TIMESTAMP, " ".join(OPTION_LETTERS), " ".join(DIGITS),
             f"{USER}: {ASSISTANT}:", *VOCABULARY_TEXTS]
    words = [word for text in texts for word, _ in split.pre_tokenize_str(PLACEHOLDER.sub(" ", text))]
    clip_words = [w for w in clip_vocabulary() if w not in SPECIAL_TOKENS]
    return list(dict.fromkeys([*SPECIAL_TOKENS, IMAGE_TOKEN, *clip_words, *words]))


def build_tokenizer(max_len: int, words: list[str] | None = None, special: tuple[str, ...] = ()
                    ) -> "PreTrainedTokenizerFast":
    """Word-level, case kept, [BOS] before a text (no [EOS]: a prompt must stay open for the answer),
    over `words` (default `vocabulary()`); the image token and `special` are never split."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(words if words is not None else vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizer()
    backend.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, vocab[BOS])])
    backend.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_len, pad_token=PAD, unk_token=UNK,
                                   bos_token=BOS, eos_token=EOS, additional_special_tokens=[IMAGE_TOKEN, *special])


def build_processor(clip_dir: Path, tokenizer: "PreTrainedTokenizerFast", patch_size: int) -> "LlavaProcessor":
    """The CLIP's own image preprocessing (PIL backend: no torchvision), our tokenizer and chat template."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    image_processor = CLIPImageProcessorPil.from_pretrained(clip_dir, local_files_only=True)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy=FEATURE_STRATEGY, num_additional_image_tokens=CLS_TOKENS,
                          image_token=IMAGE_TOKEN, chat_template=CHAT_TEMPLATE)


def build_vlm(clip_dir: str | Path, config: VlmShapesConfig | None = None
              ) -> tuple["LlavaForConditionalGeneration", "LlavaProcessor"]:
    """A LLaVA whose vision tower is the CLIP's (weights copied), with a fresh projector and language model.

    A missing CLIP is a MissingModelError naming the `groundloop train clip` command that makes one."""
    from transformers import CLIPModel, LlavaForConditionalGeneration

    config = config or VlmShapesConfig()
    clip_dir = require_model_dir(clip_dir)
    clip = CLIPModel.from_pretrained(clip_dir, local_files_only=True)
    tokenizer = build_tokenizer(config.max_positions)
    pad_id, bos_id, eos_id, image_id = tokenizer.convert_tokens_to_ids([PAD, BOS, EOS, IMAGE_TOKEN])
    vision = clip.config.vision_config
    model = LlavaForConditionalGeneration(config.to_hf(vision, len(tokenizer), pad_id=pad_id, bos_id=bos_id,
                                                       eos_id=eos_id, image_token_id=image_id))
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict())
    generation = model.generation_config
    generation.pad_token_id, generation.bos_token_id, generation.eos_token_id = pad_id, bos_id, eos_id
    return model, build_processor(clip_dir, tokenizer, vision.patch_size)


def model_parts(model: "LlavaForConditionalGeneration") -> dict[str, "torch.nn.Module"]:
    """The three parts the training stages freeze or train: vision tower, projector, language model
    (with its output head, which shares the input embeddings when they are tied)."""
    import torch

    inner = model.model
    return {VISION: inner.vision_tower, PROJECTOR: inner.multi_modal_projector,
            LM: torch.nn.ModuleList([inner.language_model, model.lm_head])}


def save_vlm_dir(model: "LlavaForConditionalGeneration", processor: "LlavaProcessor", config: VlmShapesConfig,
                 directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write the whole directory (weights, processor, our record) or nothing."""
    def write(partial: Path) -> None:
        model.save_pretrained(partial)
        processor.save_pretrained(partial)

    return write_model_dir(directory, write, META_FILE, {"format": MODEL_FORMAT, "config": config.to_dict(), **meta})


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Our record of a VLM directory ({} for a checkpoint that is not one of ours)."""
    return read_model_meta(directory, META_FILE)
