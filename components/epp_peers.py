"""What lets a pool's EPP replicas tell each other their picks (``epp.peers``) on GKE.

* A headless Service, ``<pool>-epp-peers``, over the replicas' pods, with their UDP peer port: its
  name resolves to every replica's pod address, ready or starting (each replica looks it up every
  10 s, on ``--peers``, and leaves itself out; it takes datagrams only from those addresses).
* A Secret, ``<pool>-epp-peers``, made of two random values of the stack (``pulumi-random``; secret
  in the state): ``key``, the key the replicas seal their datagrams with (mounted read-only as a file,
  ``--peer-key-file``), and ``hash-seed``, the ``PYTHONHASHSEED`` every replica runs with, so that
  their prompt block hashes agree. Both stay the same from one ``pulumi up`` to the next; a stranger
  in the cluster that sends to the port is refused (no key) and cannot predict the hashes.

One replica alone needs none of it: nothing is made for ``replicas: 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
from epp.contract import EPP_PEER_PORT

from components.podspec import Fields, secret_env, secret_file_volume
from components.secrets import as_secret

PEER_PORT_NAME = "peers"
KEY_FILE = "key"
HASH_SEED_KEY = "hash-seed"
MOUNT_DIR = "/etc/epp-peers"
VOLUME = "peer-key"
CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class PeerWiring:
    """What the EPP's Deployment and command line get."""

    peers: str
    """``--peers``: the headless Service's name and the peer port."""
    key_file: str
    """``--peer-key-file``."""
    port: Fields
    mount: Fields
    volume: Fields
    env: Fields


class EppPeers(pulumi.ComponentResource):
    """The headless Service and the Secret of one pool's EPP replicas (see the module's docstring)."""

    service: k8s.core.v1.Service
    secret: k8s.core.v1.Secret
    wiring: PeerWiring

    def __init__(
        self,
        name: str,
        *,
        namespace: str,
        namespace_ref: pulumi.Input[str],
        labels: dict[str, str],
        selector: dict[str, str],
        provider: k8s.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("gke-llm-gateway:index:EppPeers", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        metadata: Fields = {"name": name, "namespace": namespace_ref, "labels": labels}
        mine = pulumi.ResourceOptions(parent=self)
        key = random.RandomPassword(f"{name}-key", length=48, special=False, opts=mine)
        seed = random.RandomInteger(f"{name}-hash-seed", min=1, max=2**32 - 1, opts=mine)
        self.secret = k8s.core.v1.Secret(
            name,
            metadata=metadata,
            type="Opaque",
            string_data={
                KEY_FILE: key.result,
                HASH_SEED_KEY: as_secret(seed.result.apply(_decimal)),
            },
            opts=child,
        )
        spec: Fields = {
            "clusterIP": "None",
            # A starting replica is sent picks (and sends its own) before it is ready to serve.
            "publishNotReadyAddresses": True,
            "selector": selector,
            "ports": [{"name": PEER_PORT_NAME, "port": EPP_PEER_PORT, "targetPort": PEER_PORT_NAME,
                       "protocol": "UDP"}],
        }
        self.service = k8s.core.v1.Service(name, metadata=metadata, spec=spec, opts=child)
        self.wiring = PeerWiring(
            # Fully qualified (the trailing dot): no walk through the pod's DNS search path.
            peers=f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}.:{EPP_PEER_PORT}",
            key_file=f"{MOUNT_DIR}/{KEY_FILE}",
            port={"name": PEER_PORT_NAME, "containerPort": EPP_PEER_PORT, "protocol": "UDP"},
            mount={"name": VOLUME, "mountPath": MOUNT_DIR, "readOnly": True},
            volume=secret_file_volume(VOLUME, self.secret.metadata.name, KEY_FILE),
            env=secret_env("PYTHONHASHSEED", self.secret.metadata.name, HASH_SEED_KEY),
        )
        self.register_outputs({"service": name, "secret": name})


def _decimal(value: int) -> str:
    return str(int(value))
