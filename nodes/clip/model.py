"""The shapes-world CLIP as a model directory: a transformers `CLIPModel` with its tokenizer and
preprocessing beside it, loadable with `CLIPModel.from_pretrained(dir, local_files_only=True)`.

A directory holds `config.json` + `model.safetensors` (transformers), `tokenizer.json` +
`tokenizer_config.json` (our word-level tokenizer as a `PreTrainedTokenizerFast`),
`preprocessor_config.json` (CLIPImageProcessor fields: size, mean/std) and `groundloop_clip.json`
(our config and the training record: steps, time, held-out retrieval AUC). It is written beside its
final place and renamed there, so a reader never sees half a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.clip.config import ClipShapesConfig
from nodes.clip.processing import BOS, EOS, PAD, ImagePreprocessor
from nodes.model_dir import read_model_meta, write_model_dir

if TYPE_CHECKING:
    from transformers import CLIPModel, PreTrainedTokenizerFast

MODEL_FORMAT = "groundloop.clip/1"
META_FILE = "groundloop_clip.json"
HF_CONFIG_FILE = "config.json"
DEFAULT_MODEL_DIR = "models/clip_shapes"
TRAIN_COMMAND = "groundloop train clip --out {path} --minutes 20"


class MissingModelError(FileNotFoundError):
    """No model where the config points; the message names the path and the command that makes one."""


def require_model_dir(path: str | Path, marker: str = HF_CONFIG_FILE, make_hint: str | None = None) -> Path:
    """`path` as a directory holding `marker`, else a MissingModelError that says how to make it."""
    path = Path(path)
    if (path / marker).is_file():
        return path
    hint = make_hint or (f"train one with `{TRAIN_COMMAND.format(path=path)}`, or point at a local Hugging Face "
                         "CLIP checkpoint directory")
    what = "does not exist" if not path.exists() else f"has no {marker}"
    raise MissingModelError(f"no CLIP model at {path} (the path {what}): {hint}")


def build_model(config: ClipShapesConfig, tokenizer: "PreTrainedTokenizerFast") -> "CLIPModel":
    """A freshly initialised CLIPModel sized by `config`, its text side sized by `tokenizer`."""
    from transformers import CLIPModel

    config.validate()
    ids = tokenizer.convert_tokens_to_ids([PAD, BOS, EOS])
    return CLIPModel(config.to_hf(len(tokenizer), *ids))


def save_model_dir(model: "CLIPModel", tokenizer: "PreTrainedTokenizerFast", config: ClipShapesConfig,
                   directory: str | Path, meta: dict[str, Any]) -> Path:
    """Write the whole directory (weights, tokenizer, preprocessing, our record) or nothing."""
    def write(partial: Path) -> None:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        ImagePreprocessor.for_config(config).save(partial)

    return write_model_dir(directory, write, META_FILE, {"format": MODEL_FORMAT, "config": config.to_dict(), **meta})


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Our record of a model directory ({} for a checkpoint that is not one of ours)."""
    return read_model_meta(directory, META_FILE)


def count_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())
