"""`UGroundModel`: the shapes-world VLM with [SEG]/[REJ], UGround's similarity-map mask prompt, and a small SAM.

One pass of the LLaVA-style VLM (`nodes.shapes_vlm`: our CLIP's vision tower, frozen, a projector and a
small Llama) over "<image>×36 Please segment EXPR. ASSISTANT:" gives, at the last prompt token, the choice
between [SEG] and [REJ] and the [SEG] embedding at each of the L hidden layers (embeddings + every layer,
the paper's "unrolled" states). For every [SEG] (reference/papers.md §2):
- a layer is picked: mode 1 the last, mode 2 the policy's for the map and the last for SAM, mode 3 the
  policy's for both (policy.py);
- the similarity map: the [SEG] state against the image tokens' states of the map's layer, dot product,
  per-map min–max, resized to the image and then to SAM's (1, 4E, 4E) mask input (nodes.sam.similarity);
- SAM's sparse prompt: the [SEG] state of SAM's layer through `text_hidden_fcs` (Linear(D, D) → ReLU →
  Linear(D, C)), one prompt token; the map goes in as SAM's dense mask prompt (or SAM's "no mask"
  embedding, for the ablation without a mask prompt); SAM's decoder gives one mask, at the image's size.
A [REJ] gets no mask: the caller answers it with an empty one.

A model directory holds `vlm/` (a Hugging Face LLaVA: config, weights, our word-level tokenizer with
[SEG] and [REJ], the CLIP's preprocessor_config.json), `sam/` (nodes.sam's format), `heads.safetensors`
(the projection and the layer policy with its baseline) and `groundloop_uground.json` (our config and the
training record), written whole or not at all.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nodes.clip.model import MissingModelError
from nodes.clip.processing import ImagePreprocessor
from nodes.model_dir import read_model_meta, write_model_dir
from nodes.sam.config import build_model as build_sam
from nodes.sam.processing import SamPreprocessor, masks_to_image
from nodes.sam.similarity import similarity_maps
from nodes.shapes_vlm.model import IMAGE_TOKEN, VISION, build_vlm, model_parts, pre_tokenizer
from nodes.shapes_vlm.model import build_tokenizer as build_vlm_tokenizer
from nodes.shapes_vlm.model import vocabulary as vlm_vocabulary
from nodes.shapes_vlm.train import load_init_weights
from nodes.uground.config import MODE_LAST, MODE_POLICY, UGroundConfig
from nodes.uground.data import REJ_TOKEN, SEG_TOKEN, VOCABULARY_TEXT, UGroundBatch, UGroundEncoder
from nodes.uground.policy import LayerChoice, LayerPolicy
from nodes.uground.stills import STILLS_WORDS

if TYPE_CHECKING:
    from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerFast, SamModel

MODEL_FORMAT = "groundloop.uground/1"
META_FILE = "groundloop_uground.json"
VLM_DIR, SAM_DIR, HEADS_FILE = "vlm", "sam", "heads.safetensors"
TRAIN_COMMAND = "groundloop train uground --out {path}"
MODEL_INPUTS = ("input_ids", "attention_mask", "clip_pixels", "sam_pixels", "seg_positions", "has_target")


def vocabulary() -> list[str]:
    """The shapes-world VLM's words (same ids), then the referring expressions' new words, [SEG] and [REJ],
    then the grounded-picking stills' words (after [SEG]/[REJ], so a model trained before they came keeps
    every id and `load_init_uground` only grows its embeddings)."""
    words = [word for word, _ in pre_tokenizer().pre_tokenize_str(VOCABULARY_TEXT)]
    return list(dict.fromkeys([*vlm_vocabulary(), *words, SEG_TOKEN, REJ_TOKEN, *STILLS_WORDS]))


def build_tokenizer(max_len: int) -> "PreTrainedTokenizerFast":
    """The shapes-world VLM's word-level tokenizer over `vocabulary()`; [SEG] and [REJ] are never split."""
    return build_vlm_tokenizer(max_len, vocabulary(), special=(SEG_TOKEN, REJ_TOKEN))


@dataclass
class VlmReading:
    """What one VLM pass over a batch gives UGround."""

    logits: torch.Tensor  # (B, T, V)
    seg_states: torch.Tensor  # (B, L, D): the [SEG] embedding at every hidden layer
    image_states: torch.Tensor  # (B, L, P, D): the image tokens' states at every hidden layer
    present: torch.Tensor  # (B,) logit([SEG]) − logit([REJ]) at the answer: > 0 means a target is there


@dataclass
class MaskPrediction:
    """SAM's answer for N [SEG]s, with the maps that prompted it."""

    similarity: torch.Tensor  # (N, H, W) in [0, 1]: the image-frame map (supervised by the Gaussian loss)
    prompt: torch.Tensor  # (N, 1, 4E, 4E): the map as SAM's mask input
    mask_logits: torch.Tensor  # (N, H, W)
    iou: torch.Tensor  # (N,) SAM's predicted IoU
    token_scores: torch.Tensor  # (N, T) the [SEG] state's raw dot product with each image token (the pointing loss)

    @classmethod
    def none(cls, image_hw: tuple[int, int], prompt_size: int, device: torch.device) -> "MaskPrediction":
        """No [SEG] to segment (a batch of empty targets)."""
        maps = torch.zeros((0, *image_hw), device=device)
        prompts = torch.zeros((0, 1, prompt_size, prompt_size), device=device)
        return cls(maps, prompts, maps, torch.zeros(0, device=device), torch.zeros((0, 0), device=device))


@dataclass
class UGroundOutput:
    reading: VlmReading
    rows: torch.Tensor  # (N,) the batch rows that were segmented
    choice: LayerChoice  # the similarity map's layer per segmented row
    sam_layers: torch.Tensor  # (N,) the sparse prompt's layer
    masks: MaskPrediction


class UGroundModel(nn.Module):
    """VLM + [SEG]/[REJ] + layer policy + SAM, trained end to end except the CLIP tower."""

    def __init__(self, config: UGroundConfig, vlm: "LlavaForConditionalGeneration", sam: "SamModel",
                 tokenizer: "PreTrainedTokenizerFast"):
        super().__init__()
        config.validate()
        self.config, self.vlm, self.sam = config, vlm, sam
        hidden, embed = config.vlm.hidden_size, config.sam.embed_dim
        self.text_hidden_fcs = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, embed))
        self.policy = LayerPolicy(config.num_layers, hidden, init=config.policy_init, ema_decay=config.ema_decay)
        ids = tokenizer.convert_tokens_to_ids([SEG_TOKEN, REJ_TOKEN, IMAGE_TOKEN])
        self.seg_id, self.rej_id, self.image_token_id = ids
        vision = vlm.config.vision_config
        self.clip_side = vision.image_size
        self.grid = (vision.image_size // vision.patch_size,) * 2
        model_parts(vlm)[VISION].requires_grad_(False)  # the CLIP tower stays as trained

    def read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, clip_pixels: torch.Tensor,
             seg_positions: torch.Tensor) -> VlmReading:
        out = self.vlm(input_ids=input_ids, attention_mask=attention_mask, pixel_values=clip_pixels,
                       output_hidden_states=True)
        states = torch.stack(out.hidden_states, dim=1)  # (B, L, T, D)
        batch, layers, _, hidden = states.shape
        rows = torch.arange(batch, device=states.device)
        image_positions = (input_ids == self.image_token_id).nonzero()[:, 1].view(batch, -1)  # (B, P)
        gather = image_positions[:, None, :, None].expand(-1, layers, -1, hidden)  # (B, L, P, D)
        answer = out.logits[rows, seg_positions]  # (B, V)
        return VlmReading(out.logits, states[rows, :, seg_positions], states.gather(2, gather),
                          answer[:, self.seg_id] - answer[:, self.rej_id])

    def embed_images(self, sam_pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) → SAM's (N, C, E, E) image embeddings, with gradients (SAM trains here)."""
        return self.sam.vision_encoder(sam_pixels).last_hidden_state

    def layers(self, seg_states: torch.Tensor, mode: int, *, sample: bool,
               layer: int | None = None) -> tuple[LayerChoice, torch.Tensor]:
        """(N, L, D) → the map's layer choice and the sparse prompt's layers (N,) by `mode`; `layer` fixes
        both to one layer instead (layer-by-layer evaluation)."""
        count, device = seg_states.shape[0], seg_states.device
        if layer is not None:
            choice = self.policy.fixed(layer, count, device)
            return choice, choice.layers
        last = self.policy.last(count, device)
        if mode == MODE_LAST:
            return last, last.layers
        choice = self.policy.choose(seg_states, sample=sample)
        return choice, choice.layers if mode == MODE_POLICY else last.layers

    def decode(self, seg_states: torch.Tensor, image_states: torch.Tensor, image_embeddings: torch.Tensor,
               map_layers: torch.Tensor, sam_layers: torch.Tensor, image_hw: tuple[int, int],
               resized_hw: tuple[int, int], *, mask_prompt: bool = True) -> MaskPrediction:
        """N [SEG]s: seg_states (N, L, D), image_states (N, L, P, D), image_embeddings (N, C, E, E)."""
        rows = torch.arange(seg_states.shape[0], device=seg_states.device)
        maps = similarity_maps(seg_states[rows, map_layers], image_states[rows, map_layers], self.grid, image_hw,
                               prompt_size=self.config.sam.mask_prompt_size, canvas=self.clip_side)
        sparse = self.text_hidden_fcs(seg_states[rows, sam_layers])[:, None, None, :]  # (N, 1, 1, C)
        encoder = self.sam.prompt_encoder
        if mask_prompt:
            dense = encoder.mask_embed(maps.prompt)  # (N, C, E, E)
        else:
            no_mask = encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)  # (1, C, 1, 1)
            dense = no_mask.expand(len(rows), -1, *encoder.image_embedding_size)  # (N, C, E, E)
        positions = self.sam.get_image_wide_positional_embeddings().expand(len(rows), -1, -1, -1)  # (N, C, E, E)
        low_res, iou = self.sam.mask_decoder(image_embeddings=image_embeddings, image_positional_embeddings=positions,
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                             multimask_output=False)  # (N, 1, 1, 4E, 4E), (N, 1, 1)
        logits = masks_to_image(low_res[:, 0, 0], self.config.sam.image_size, resized_hw, image_hw)  # (N, H, W)
        return MaskPrediction(maps.image, maps.prompt, logits, iou[:, 0, 0], maps.tokens)

    def forward(self, inputs: dict[str, torch.Tensor], image_hw: tuple[int, int], resized_hw: tuple[int, int], *,
                mode: int, sample: bool, rows: torch.Tensor | None = None, mask_prompt: bool = True) -> UGroundOutput:
        """Teacher-forced pass: `rows` (N,) are segmented (default: the rows with a target, as in training)."""
        reading = self.read(inputs["input_ids"], inputs["attention_mask"], inputs["clip_pixels"],
                            inputs["seg_positions"])
        if rows is None:
            rows = inputs["has_target"].nonzero()[:, 0]  # (N,)
        seg, images = reading.seg_states[rows], reading.image_states[rows]  # (N, L, D), (N, L, P, D)
        if not len(rows):
            choice = self.policy.last(0, seg.device)
            none = MaskPrediction.none(image_hw, self.config.sam.mask_prompt_size, seg.device)
            return UGroundOutput(reading, rows, choice, choice.layers, none)
        choice, sam_layers = self.layers(seg, mode, sample=sample)
        masks = self.decode(seg, images, self.embed_images(inputs["sam_pixels"][rows]), choice.layers, sam_layers,
                            image_hw, resized_hw, mask_prompt=mask_prompt)
        return UGroundOutput(reading, rows, choice, sam_layers, masks)


def to_inputs(batch: UGroundBatch, device: torch.device) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(getattr(batch, key)).to(device) for key in MODEL_INPUTS}


def build_uground(clip_dir: str | Path, config: UGroundConfig,
                  init_vlm: str | Path | None = None) -> tuple[UGroundModel, UGroundEncoder]:
    """A UGround on a trained CLIP's tower: the VLM by `build_vlm` (with `init_vlm`, the weights of a trained
    shapes-world VLM of the same sizes, as the paper starts from a trained LLaVA), its vocabulary grown by the
    referring words and [SEG]/[REJ]; a fresh small SAM and fresh heads."""
    vlm, _ = build_vlm(clip_dir, config.vlm)
    if init_vlm is not None:
        load_init_weights(vlm, Path(init_vlm))
    tokenizer = build_tokenizer(config.vlm.max_positions)
    vlm.resize_token_embeddings(len(tokenizer))  # the new words come after the VLM's: its ids are unchanged
    model = UGroundModel(config, vlm, build_sam(config.sam), tokenizer)
    encoder = UGroundEncoder(tokenizer, vlm.config.image_seq_length, ImagePreprocessor.from_dir(clip_dir),
                             config.sam.preprocessor())
    return model, encoder


def load_init_uground(model: UGroundModel, encoder: UGroundEncoder, directory: str | Path) -> None:
    """Start `model` from a trained UGround directory of the same sizes whose vocabulary is a prefix of
    `encoder`'s (the words added since get fresh embedding rows); a different vocabulary is an error."""
    trained, trained_encoder = load_uground(directory)
    old, new = trained_encoder.tokenizer.get_vocab(), encoder.tokenizer.get_vocab()
    changed = sorted(word for word, i in old.items() if new.get(word) != i)
    if changed:
        raise ValueError(f"UGround at {directory}: its vocabulary is not a prefix of this one "
                         f"({len(changed)} words differ, e.g. {changed[:5]})")
    state = model.state_dict()
    for key, value in trained.state_dict().items():
        if key not in state:
            raise ValueError(f"UGround at {directory}: {key} is not in this model (other sizes?)")
        target = state[key]
        if value.shape == target.shape:
            target.copy_(value)
        elif value.shape[1:] == target.shape[1:] and value.shape[0] < target.shape[0]:
            target[: value.shape[0]].copy_(value)  # (V_old, D) rows of a grown vocabulary
        else:
            raise ValueError(f"UGround at {directory}: {key} is {tuple(value.shape)}, this model's "
                             f"{tuple(target.shape)}")


def save_uground_dir(model: UGroundModel, encoder: UGroundEncoder, directory: str | Path, meta: dict[str, Any],
                     dtype: torch.dtype = torch.float32) -> Path:
    """Write the whole directory (VLM, SAM, heads, our record) or nothing; the weights stored as `dtype`
    (float16 halves the directory; `load_uground` reads them back as float32), the live model untouched."""
    from safetensors.torch import save_file

    def stored(module: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
                for k, v in module.state_dict().items()}

    def write(partial: Path) -> None:
        model.vlm.save_pretrained(partial / VLM_DIR, state_dict=stored(model.vlm))
        encoder.tokenizer.save_pretrained(partial / VLM_DIR)
        encoder.clip_preprocess.save(partial / VLM_DIR)
        model.sam.save_pretrained(partial / SAM_DIR, state_dict=stored(model.sam))
        encoder.sam_preprocess.save(partial / SAM_DIR)
        heads = {f"text_hidden_fcs.{k}": v for k, v in stored(model.text_hidden_fcs).items()}
        heads.update({f"policy.{k}": v for k, v in stored(model.policy).items()})
        save_file(heads, str(partial / HEADS_FILE))

    record = {"format": MODEL_FORMAT, "config": model.config.to_dict(), "weights_dtype": str(dtype), **meta}
    return write_model_dir(directory, write, META_FILE, record)


def read_meta(directory: str | Path) -> dict[str, Any]:
    return read_model_meta(directory, META_FILE)


def require_model_dir(path: str | Path) -> Path:
    """`path` as a UGround directory, else a MissingModelError naming it and the command that makes one."""
    path = Path(path)
    if (path / META_FILE).is_file() and (path / HEADS_FILE).is_file():
        return path
    what = "does not exist" if not path.exists() else f"has no {META_FILE} or {HEADS_FILE}"
    raise MissingModelError(f"no UGround model at {path} (the path {what}): train one with "
                            f"`{TRAIN_COMMAND.format(path=path)}` (needs the CLIP at models/clip_shapes)")


def load_uground(directory: str | Path, device: str | torch.device = "cpu") -> tuple[UGroundModel, UGroundEncoder]:
    """A saved UGround, in eval mode on `device`, with the encoder that makes its inputs."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, LlavaForConditionalGeneration, SamModel

    directory = require_model_dir(directory)
    config = UGroundConfig.from_dict(read_meta(directory)["config"])
    vlm = LlavaForConditionalGeneration.from_pretrained(directory / VLM_DIR, local_files_only=True, dtype=torch.float32)
    sam = SamModel.from_pretrained(directory / SAM_DIR, local_files_only=True, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory / VLM_DIR, local_files_only=True)
    model = UGroundModel(config, vlm, sam, tokenizer)
    heads = load_file(str(directory / HEADS_FILE))
    for prefix, module in (("text_hidden_fcs.", model.text_hidden_fcs), ("policy.", model.policy)):
        module.load_state_dict({k[len(prefix):]: v for k, v in heads.items() if k.startswith(prefix)})
    encoder = UGroundEncoder(tokenizer, vlm.config.image_seq_length, ImagePreprocessor.from_dir(directory / VLM_DIR),
                             SamPreprocessor.from_dir(directory / SAM_DIR))
    return model.to(device).eval(), encoder
