"""TLS for the ext_proc port.

Google Cloud load balancers call ext_proc backends (GKE's InferencePool endpoint pickers and
route extensions) over HTTP/2 with TLS and do not verify the certificate. So, like the upstream
EPP's secure serving, the server presents either a certificate mounted from a Secret
(``tls.crt`` and ``tls.key`` in one folder) or a self-signed one made in memory at startup.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"


def self_signed(common_name: str, *, days: int = 3650) -> tuple[bytes, bytes]:
    """A fresh P-256 key and a self-signed certificate for ``common_name``, both PEM: (key, cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def load_pair(directory: Path) -> tuple[bytes, bytes]:
    """(key, cert) PEM from ``directory``/tls.key and tls.crt; a clear error names a missing file."""
    files = {name: directory / name for name in (KEY_FILE, CERT_FILE)}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"--cert-path {directory}: missing {', '.join(missing)}")
    return files[KEY_FILE].read_bytes(), files[CERT_FILE].read_bytes()


def server_credentials(cert_path: Path | None, common_name: str) -> grpc.ServerCredentials:
    """Credentials from ``cert_path`` when given, else from a self-signed certificate."""
    key, cert = load_pair(cert_path) if cert_path is not None else self_signed(common_name)
    return grpc.ssl_server_credentials([(key, cert)])
