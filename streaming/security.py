"""ZeroMQ CURVE keys for edges that cross hosts: a server key pair per graph and authorised clients.

Layout of a keys directory (made by `groundloop keys DIR`):

    server.key / server.key_secret     the producers' key pair (every producer socket uses it)
    client.key / client.key_secret     a consumer key pair (copy to each host that runs consumers)
    authorized/client.key              public keys allowed to connect; add more with their .key files

A client without the server's public key, or whose public key is not in authorized/, cannot complete
the handshake: its connection is refused by the producer's ZAP authenticator.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER, CLIENT, AUTHORIZED = "server", "client", "authorized"


@dataclass
class CurveKeys:
    server_public: bytes
    server_secret: bytes | None  # only where producers run
    client_public: bytes
    client_secret: bytes
    authorized_dir: Path


def generate_keys(directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (SERVER, CLIENT):
        if not (directory / f"{name}.key_secret").exists():
            zmq.auth.create_certificates(str(directory), name)
    authorized = directory / AUTHORIZED
    authorized.mkdir(exist_ok=True)
    shutil.copy(directory / f"{CLIENT}.key", authorized / f"{CLIENT}.key")
    return directory


def load_keys(directory: str | Path) -> CurveKeys:
    directory = Path(directory)
    server_secret_file = directory / f"{SERVER}.key_secret"
    client_secret_file = directory / f"{CLIENT}.key_secret"
    if not client_secret_file.exists() or not (directory / f"{SERVER}.key").exists():
        raise FileNotFoundError(f"CURVE keys missing in {directory}: run `groundloop keys {directory}`")
    server_public, _ = zmq.auth.load_certificate(str(directory / f"{SERVER}.key"))
    server_secret = zmq.auth.load_certificate(str(server_secret_file))[1] if server_secret_file.exists() else None
    client_public, client_secret = zmq.auth.load_certificate(str(client_secret_file))
    return CurveKeys(server_public, server_secret, client_public, client_secret, directory / AUTHORIZED)


def start_authenticator(context: zmq.Context, keys: CurveKeys) -> ThreadAuthenticator:
    """Only clients whose public keys are in keys.authorized_dir may connect to this process's servers."""
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve(domain="*", location=str(keys.authorized_dir))
    return authenticator
