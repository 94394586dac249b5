"""TLS on the hop between a gateway and the model servers it did not start (``https://`` in URLS).

A model server run on its own (``endpoint <name>``) serves its port over TLS when
``BIS_TLS_CERT_FILE`` (its certificate chain, PEM) and ``BIS_TLS_KEY_FILE`` (its private key) are
set. A gateway verifies such servers against the system's certificate authorities, or against the
ones in ``BIS_TLS_CA_FILE`` (a PEM bundle: a private CA), and checks that the certificate names the
host of the URL (a DNS name with several addresses: each of them shows the same certificate).
Both sides take TLS 1.2 or later. Errors name the variable and the file, never a key.
"""

from __future__ import annotations

import os
import ssl

CERT_ENV = "BIS_TLS_CERT_FILE"
KEY_ENV = "BIS_TLS_KEY_FILE"
CA_ENV = "BIS_TLS_CA_FILE"


def server_context() -> ssl.SSLContext | None:
    """The model server's TLS context from BIS_TLS_CERT_FILE and BIS_TLS_KEY_FILE, or None when
    neither is set; ValueError when only one is, or when they do not load."""
    cert, key = os.environ.get(CERT_ENV), os.environ.get(KEY_ENV)
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError(f"{CERT_ENV} and {KEY_ENV} go together: set both, or neither")
    for variable, path in ((CERT_ENV, cert), (KEY_ENV, key)):
        if not os.path.isfile(path):
            raise ValueError(f"{variable}: no such file: {path}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        raise ValueError(f"{KEY_ENV} ({key}) is encrypted: give the server an unencrypted key "
                         "(a secret file readable by it alone)") from None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{CERT_ENV} ({cert}) and {KEY_ENV} ({key}) do not load as a PEM certificate chain "
                         f"and its key: {getattr(exc, 'reason', None) or exc}") from None
    return context


class _EncryptedKey(Exception):
    pass


def _no_password() -> str:
    raise _EncryptedKey  # OpenSSL asks for the key's passphrase: never on a terminal here


def client_context() -> ssl.SSLContext:
    """How a gateway checks the model servers of its ``https://`` URLS: the system's authorities,
    or BIS_TLS_CA_FILE's; ValueError when that file does not load."""
    cafile = os.environ.get(CA_ENV) or None
    if cafile is not None and not os.path.isfile(cafile):
        raise ValueError(f"{CA_ENV}: no such file: {cafile}")
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{CA_ENV} ({cafile}) does not load as PEM certificates: "
                         f"{getattr(exc, 'reason', None) or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
