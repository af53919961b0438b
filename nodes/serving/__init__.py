"""Heavy models (CLIP, a VLM, the action expert) as named Ray Serve deployments shared by graphs.

`groundloop serve configs/models.yaml` starts them (`cli.py`, with the replicas' classes in
`deployments.py`); a node names one instead of a checkpoint (`model: {serve: clip}`) and calls it
through `client.py`, which retries a call whose replica died. `config.py` holds the file's schema and
loads nothing heavy: graph validation reads it without Ray.
"""
