"""SAM for masks: a small config for our own training, SAM's resize-and-pad frame, UGround's
similarity-map mask prompts and the `SamMasker` node (one image embedding per frame, many prompts).

The model is a transformers `SamModel` loaded from a local directory, so any Hugging Face SAM
checkpoint with its preprocessor config serves the same node.
"""
