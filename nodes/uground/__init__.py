"""UGround (reference/papers.md §2) on the shapes world: the LLaVA-style shapes VLM with [SEG]/[REJ], the
similarity map between the [SEG] state and the image tokens as SAM's mask prompt, a REINFORCE-trained policy
over the VLM's layers, and the small SAM (`groundloop train uground`; the node is `UGroundNode`)."""
