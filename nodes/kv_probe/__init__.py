"""The visual-KV probe (reference/papers.md §7): per-layer image value tokens from an HF VLM's KV cache,
zero-shot referring segmentation by dot product with the expression's value, input-agnostic image
keys blocked by attention masking, and a text prefix before the image. Nothing loads at import."""
from nodes.kv_probe.blocking import BlockedKeys, agnostic_keys, key_blocking
from nodes.kv_probe.probe import DEFAULT_THRESHOLD, KvProbe, ProbeResult, probe_maps, probe_scores, threshold_maps

__all__ = ["BlockedKeys", "DEFAULT_THRESHOLD", "KvProbe", "ProbeResult", "agnostic_keys", "key_blocking", "probe_maps",
           "probe_scores", "threshold_maps"]
