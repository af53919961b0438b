"""The schema of `configs/models.yaml` (which deployments `groundloop serve` starts) and of the
`{serve: NAME}` reference a node uses instead of a checkpoint path.

Nothing here imports Ray or a model: a graph that names a deployment validates without either.
Security: Ray and Serve's HTTP proxy bind to 127.0.0.1 unless the file says otherwise (`ray_host`,
`http_host`); `exposed()` lists what a file opens beyond this machine, and the CLI prints it.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

LOOPBACK = "127.0.0.1"
LOCALHOST = "localhost"
KIND_CLIP, KIND_VLM, KIND_ACTION_EXPERT = "clip", "vlm", "action_expert"
DEFAULT_HTTP_PORT = 8000
DEFAULT_ADDRESS_FILE = "runs/serve/address.json"  # where `groundloop serve` tells clients its Ray address
SERVE_COMMAND = "groundloop serve configs/models.yaml"
DEFAULT_MAX_BATCH = 32
DEFAULT_BATCH_WAIT_S = 0.01  # well below a frame period: a lone request waits at most this long for company
DEFAULT_MAX_ONGOING = 16  # Serve's default of 5 throttles a burst of callers (reference/platform.md)
DEFAULT_HEALTH_PERIOD_S = 10.0
DEFAULT_HEALTH_TIMEOUT_S = 30.0
DEFAULT_CONSTRUCTOR_RETRIES = 3  # a checkpoint that fails to load fails the deploy in seconds, not minutes
DEFAULT_RETRY_TIMEOUT_S = 120.0  # a replaced replica must start and load its model within this
DEFAULT_MAX_IN_FLIGHT = 4  # requests an offline job keeps outstanding: transfer overlaps compute
#: fields that mean something for one kind only
KIND_ONLY = {"backend": KIND_CLIP, "dtype": KIND_VLM}
#: the VLM adapters generate one prompt at a time: nothing to batch
RESOURCE_EPS = 1e-9  # fractional reservations add up with rounding error
UNBATCHED_KINDS = (KIND_VLM,)


class ServeConfigError(ValueError):
    """A models file that cannot be used; the message names the file and the field."""


class ServeRef(BaseModel):
    """A node's model given as a running deployment: `{serve: clip}` in place of a checkpoint path."""

    model_config = ConfigDict(extra="forbid")
    serve: str = Field(min_length=1, description="the deployment's name in the models file")
    address: str | None = Field(None, description="Ray address (default: this process's Ray session, RAY_ADDRESS, "
                                                  f"or the one `groundloop serve` wrote to {DEFAULT_ADDRESS_FILE})")
    retry_timeout_s: float = Field(DEFAULT_RETRY_TIMEOUT_S, gt=0,
                                   description="how long a call is retried while a failed replica is replaced")
    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1, description="requests an offline job keeps outstanding")


class ActorResources(BaseModel):
    """What each replica reserves from Ray (`ray_actor_options`)."""

    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)


class DeploymentSpec(BaseModel):
    """One named deployment: which model, how many replicas, how requests are batched and checked."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", description="what nodes call it: model: {serve: NAME}")
    kind: Literal["clip", "vlm", "action_expert"]
    checkpoint: str = Field(min_length=1, description="a local path on the machines that run the replicas")
    device: str = Field("auto", description="auto: CUDA when the replica has a GPU, else CPU")
    num_threads: int | None = Field(None, ge=1, description="CPU threads of the model (None: Ray's default, "
                                                            "one per reserved CPU)")
    backend: Literal["torch", "onnx"] = Field("torch", description="clip only")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="vlm only")
    num_replicas: int = Field(1, ge=1)
    ray_actor_options: ActorResources = Field(default_factory=ActorResources)
    max_batch_size: int = Field(DEFAULT_MAX_BATCH, ge=1, description="clip: frames per model pass; action_expert: "
                                                                     "observations per pass; vlm: 1")
    batch_wait_timeout_s: float = Field(DEFAULT_BATCH_WAIT_S, ge=0)
    max_ongoing_requests: int = Field(DEFAULT_MAX_ONGOING, ge=1)
    health_check_period_s: float = Field(DEFAULT_HEALTH_PERIOD_S, gt=0)
    health_check_timeout_s: float = Field(DEFAULT_HEALTH_TIMEOUT_S, gt=0)
    max_constructor_retry_count: int = Field(DEFAULT_CONSTRUCTOR_RETRIES, ge=1)

    @model_validator(mode="after")
    def _fits_the_kind(self) -> DeploymentSpec:
        for field, kind in KIND_ONLY.items():
            if field in self.model_fields_set and self.kind != kind:
                raise ValueError(f"{field} applies to kind {kind} only (this deployment is {self.kind})")
        if self.kind in UNBATCHED_KINDS and self.max_batch_size != 1:
            raise ValueError(f"kind {self.kind} generates one prompt at a time: max_batch_size must be 1 "
                             "(scale with num_replicas instead)")
        return self

    def deployment_options(self) -> dict[str, Any]:
        """The keyword arguments of `Deployment.options` this spec sets."""
        return {"name": self.name, "num_replicas": self.num_replicas,
                "ray_actor_options": self.ray_actor_options.model_dump(),
                "max_ongoing_requests": self.max_ongoing_requests,
                "health_check_period_s": self.health_check_period_s,
                "health_check_timeout_s": self.health_check_timeout_s,
                "max_constructor_retry_count": self.max_constructor_retry_count}


class ModelsConfig(BaseModel):
    """The whole file: where Ray and Serve listen, and the deployments."""

    model_config = ConfigDict(extra="forbid")
    ray_host: str = Field(LOOPBACK, description="the address Ray advertises; loopback keeps every Ray process on "
                                                "127.0.0.1, any other address makes Ray listen on every interface")
    num_cpus: int | None = Field(None, ge=1, description="CPUs the Ray head offers (None: all)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs the Ray head offers (None: all)")
    http_host: str = Field(LOOPBACK, description="Serve's HTTP proxy; 0.0.0.0 serves every interface")
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=1, le=65535)
    address_file: str = Field(DEFAULT_ADDRESS_FILE, description="where the running cluster's address is written")
    deployments: list[DeploymentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _advertisable_ray_host(self) -> ModelsConfig:
        if is_unspecified(self.ray_host):
            raise ValueError(f"ray_host is the address Ray advertises, not a bind address: give this machine's "
                             f"address ({self.ray_host} cannot be reached; Ray listens on every interface anyway "
                             "once ray_host is not loopback)")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> ModelsConfig:
        names = [d.name for d in self.deployments]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"deployment names must be unique: {', '.join(doubled)} appear more than once")
        return self

    def deployment(self, name: str) -> DeploymentSpec:
        for spec in self.deployments:
            if spec.name == name:
                return spec
        raise KeyError(f"no deployment {name!r} in this file; it has {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [d.name for d in self.deployments]

    def over_reserved(self, cpus: float, gpus: float) -> str | None:
        """Why these deployments cannot all be placed on a head offering `cpus` and `gpus` (Serve would
        wait for the resources for ever), or None when they fit."""
        have = {"CPU": cpus, "GPU": gpus}
        need = {"CPU": sum(d.ray_actor_options.num_cpus * d.num_replicas for d in self.deployments),
                "GPU": sum(d.ray_actor_options.num_gpus * d.num_replicas for d in self.deployments)}
        short = [f"{need[r]:g} {r}s reserved, {have[r]:g} offered" for r in need if need[r] > have[r] + RESOURCE_EPS]
        if not short:
            return None
        return (f"the replicas need more than this Ray head has ({'; '.join(short)}): lower ray_actor_options "
                "(a fraction of a CPU is fine for a small model) or num_replicas, or raise num_cpus/num_gpus")

    def exposed(self) -> list[str]:
        """What this file makes reachable from other machines (empty: loopback only)."""
        hosts = {"ray_host": self.ray_host, "http_host": self.http_host}
        return [f"{field}: {host}" for field, host in hosts.items() if not is_loopback(host)]


def is_loopback(host: str) -> bool:
    if host == LOCALHOST:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: assume it resolves off this machine


def is_unspecified(host: str) -> bool:
    """0.0.0.0 or ::, which mean "every interface" to a server and nothing to a client."""
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """`deployments[1] (vlm).max_batch_size`: the field's place, with the deployment's name where it has one."""
    text, node = "", data
    for key in loc:
        if isinstance(key, int):
            item = node[key] if isinstance(node, list) and key < len(node) else None
            name = item.get("name") if isinstance(item, dict) else None
            text += f"[{key}]" + (f" ({name})" if name else "")
            node = item
        else:
            text += ("." if text else "") + str(key)
            node = node.get(key) if isinstance(node, dict) else None
    return text or "(file)"


def parse_models_config(data: Any, source: str) -> ModelsConfig:
    """The typed config of `data` (parsed YAML); ServeConfigError naming `source` and each bad field."""
    if not isinstance(data, dict):
        raise ServeConfigError(f"{source}: expected a mapping with a 'deployments' list, got {type(data).__name__}")
    try:
        return ModelsConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{_field_path(tuple(e['loc']), data)}: {e['msg']}" for e in exc.errors())
        raise ServeConfigError(f"{source}: {problems}") from None


def load_models_config(path: str | Path) -> ModelsConfig:
    """Read and check a models file; a missing or malformed file is a ServeConfigError naming it."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ServeConfigError(f"{path}: cannot read the models file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ServeConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_models_config(data, str(path))


def missing_checkpoint(spec: DeploymentSpec) -> str | None:
    """Why `spec`'s checkpoint cannot load, with the command that makes one; None when it is there.

    Checked before deploying: a replica whose constructor fails is retried by Serve, which hides the
    cause behind a slow, generic deploy failure."""
    if Path(spec.checkpoint).exists():
        return None
    if spec.kind == KIND_CLIP:
        from nodes.clip.model import TRAIN_COMMAND
    elif spec.kind == KIND_VLM:
        from nodes.vlm.hf import TRAIN_COMMAND
    else:
        from nodes.action_expert.checkpoint import TRAIN_COMMAND
    return (f"deployment {spec.name!r} ({spec.kind}): no checkpoint at {spec.checkpoint}; "
            f"make it with `{TRAIN_COMMAND.format(path=spec.checkpoint)}`")
