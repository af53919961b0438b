"""Input-agnostic image keys: finding them across many images, and blocking them by attention masking.

reference/papers.md §7: in later LM layers some image key tokens hardly depend on the image, carry
artifacts and hurt perception; blocking them helps. How the paper finds and blocks them is not
retrievable, so this is our reading of "input-agnostic":
- finding: run the VLM on N images (image-only prompts, the probe's layout without a prefix), take each
  layer's key at each image-grid position, and score a position by its *relative* variance across the
  images, Σ_d Var_n(k_d) / E_n‖k‖² — the share of the key's energy that changes with the image. A
  position whose key is nearly the same vector for every image scores near 0, whatever its norm. The
  `fraction` of grid positions with the lowest score are input-agnostic, chosen per layer.
- blocking: in each layer from `from_layer` on, no token may attend to that layer's input-agnostic
  image keys. A forward pre-hook on the layer's attention module edits the 4-D mask the model built
  (an additive float mask for eager attention, a boolean or no mask for sdpa — None means plain
  causal, which the hook then spells out), so the blocked columns get exp(min) = 0 weight after the
  softmax. The keys and values are still computed and cached; only reading them is blocked.
Positions are grid indices (0 … T−1, row-major), so a set found with one prompt applies to another
whose image tokens sit elsewhere in the sequence (after a text prefix). Flash attention takes no 4-D
mask: use eager or sdpa.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEFAULT_FRACTION = 0.1  # of the image-grid positions, per layer
FLASH_PREFIX = "flash"
VARIANCE_EPS = 1e-12


@dataclass
class BlockedKeys:
    """Per blocked layer, the image-grid indices of its input-agnostic keys, and the scores behind them."""

    layers: dict[int, tuple[int, ...]]  # layer -> grid indices, lowest relative variance first
    variance: "torch.Tensor"  # (L, T) relative key variance across the calibration images
    n_images: int

    def positions(self, image_positions: "torch.Tensor") -> dict[int, "torch.Tensor"]:
        """Layer -> sequence positions to block, for an input whose image tokens sit at `image_positions` (T,)."""
        import torch

        return {layer: image_positions[torch.tensor(indices, dtype=torch.long)] for layer, indices in self.layers.items()}

    def to_json(self) -> dict[str, Any]:
        """The blocked positions with their scores beside each layer's median: how agnostic "agnostic" is."""
        return {"layers": {str(k): list(v) for k, v in self.layers.items()}, "n_images": self.n_images,
                "blocked_variance": {str(k): [round(float(self.variance[k, i]), 4) for i in v]
                                     for k, v in self.layers.items()},
                "median_variance": [round(float(x), 4) for x in self.variance.median(dim=1).values]}


def relative_key_variance(keys: "torch.Tensor") -> "torch.Tensor":
    """(N, L, T, D) keys of N images → (L, T): Σ_d Var_n / E_n‖k‖², in [0, 1]."""
    if keys.ndim != 4 or keys.shape[0] < 2:
        raise ValueError(f"need keys of shape (N ≥ 2, L, T, D), got {tuple(keys.shape)}")
    keys = keys.double()
    variance = keys.var(dim=0, unbiased=False).sum(-1)  # (L, T)
    energy = keys.pow(2).sum(-1).mean(0)  # (L, T)
    return (variance / energy.clamp_min(VARIANCE_EPS)).float()


def agnostic_keys(keys: "torch.Tensor", *, fraction: float = DEFAULT_FRACTION, from_layer: int | None = None
                  ) -> BlockedKeys:
    """The input-agnostic positions of keys (N, L, T, D), blocked in layers from `from_layer` on
    (default: the later half, L // 2 …)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    variance = relative_key_variance(keys)  # (L, T)
    n_layers, n_tokens = variance.shape
    start = n_layers // 2 if from_layer is None else from_layer
    if not 0 <= start < n_layers:
        raise ValueError(f"from_layer {start} is outside the model's {n_layers} layers")
    count = max(1, round(fraction * n_tokens))
    layers = {layer: tuple(int(i) for i in variance[layer].argsort()[:count]) for layer in range(start, n_layers)}
    return BlockedKeys(layers=layers, variance=variance, n_images=int(keys.shape[0]))


def decoder_layers(model: Any) -> Any:
    """The language model's decoder layers of an HF VLM (LLaVA, Qwen2(.5)-VL: `model.model.language_model`)."""
    try:
        return model.model.language_model.layers
    except AttributeError:
        raise ValueError(f"{type(model).__name__}: no language_model.layers under .model; "
                         "cannot reach its attention") from None


def block_columns(mask: "torch.Tensor | None", *, q_len: int, past: int, blocked: "torch.Tensor",
                  dtype: "torch.dtype", device: "torch.device") -> "torch.Tensor":
    """The 4-D attention mask with the key columns `blocked` (positions) closed to every query.

    mask None is plain causal attention (sdpa without padding) and becomes an additive causal mask;
    a boolean mask keeps True = may attend; a float mask is additive (0 or the dtype's minimum)."""
    import torch

    if mask is None:
        rows = torch.arange(past, past + q_len, device=device)  # (Q,)
        cols = torch.arange(past + q_len, device=device)  # (K,)
        future = cols[None, :] > rows[:, None]  # (Q, K)
        mask = torch.zeros(future.shape, dtype=dtype, device=device).masked_fill(future, torch.finfo(dtype).min)
        mask = mask[None, None]  # (1, 1, Q, K)
    closed = torch.zeros(mask.shape[-1], dtype=torch.bool, device=mask.device)  # (K,)
    closed[blocked.to(mask.device)] = True
    if mask.dtype == torch.bool:
        return mask & ~closed
    return mask.masked_fill(closed, torch.finfo(mask.dtype).min)


@contextmanager
def key_blocking(model: Any, positions: Mapping[int, "torch.Tensor"]) -> Iterator[None]:
    """Within the block, layer l's attention never reads the keys at sequence positions `positions[l]`."""
    implementation = str(getattr(model.config, "_attn_implementation", ""))
    if implementation.startswith(FLASH_PREFIX):
        raise ValueError(f"key blocking needs a 4-D attention mask; {implementation} takes none: load with eager or sdpa")
    layers = decoder_layers(model)
    handles = []
    try:
        for layer, blocked in positions.items():
            attention = layers[layer].self_attn
            handles.append(attention.register_forward_pre_hook(_mask_hook(blocked), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _mask_hook(blocked: "torch.Tensor") -> Any:
    def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]  # (B, Q, D)
        cache = kwargs.get("cache")
        past = cache.get_seq_length(module.layer_idx) if cache is not None else 0
        kwargs["attention_mask"] = block_columns(kwargs.get("attention_mask"), q_len=hidden.shape[1], past=past,
                                                 blocked=blocked, dtype=hidden.dtype, device=hidden.device)
        return args, kwargs

    return hook
