"""The project's default small VLM, built the LLaVA way: our shapes-world CLIP's vision tower, a projector and
a small Llama trained from scratch on shapes-world relevance scoring, multiple-choice answering and captions
(`groundloop train vlm`). The checkpoint is a plain Hugging Face LLaVA directory: `load_vlm({"hf": DIR})`."""
