"""CURVE keys for the client socket: Z85 text, or the certificate files
that `tq keygen` writes (czmq zcert text: NAME.cert holds the public key,
NAME.cert_secret both keys)."""

import os
import re

import zmq
import zmq.utils.z85

_Z85_KEY = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}\Z")
_ZERO_KEY = "0" * 40  # what zcert writes for a missing key


def _is_z85(text):
    if not isinstance(text, str) or not _Z85_KEY.match(text):
        return False
    try:
        return len(zmq.utils.z85.decode(text)) == 32
    except ValueError:
        return False


def read_cert(path):
    """The "curve" section of a zcert file: {"public-key": ..., ...}.
    Raises ValueError for a file that is not a certificate."""
    keys = {}
    section = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.rstrip("\n")
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            if not text[0].isspace():
                section = text.strip()
                continue
            if section != "curve" or "=" not in text:
                continue
            key, _, value = text.strip().partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            keys[key.strip()] = value
    public = keys.get("public-key")
    if not _is_z85(public or "") or public == _ZERO_KEY:
        raise ValueError("%s: not a CURVE certificate" % path)
    return keys


def public_key(spec):
    """A public key given as 40 characters of Z85 or as a certificate file
    (either file of a `tq keygen` pair)."""
    if isinstance(spec, bytes):
        spec = spec.decode("ascii", "replace")
    if _is_z85(spec):
        return spec
    if not os.path.exists(spec):
        raise ValueError("public key %s: not 40 characters of Z85 and not "
                         "a readable file" % spec)
    return read_cert(spec)["public-key"]


def key_pair(path):
    """(public, secret) from a certificate: NAME.cert_secret, or NAME.cert
    when NAME.cert_secret sits beside it (as tq_curve_load_secret)."""
    for candidate in (path + "_secret", path):
        if os.path.exists(candidate):
            keys = read_cert(candidate)
            secret = keys.get("secret-key", "")
            if _is_z85(secret) and secret != _ZERO_KEY:
                return keys["public-key"], secret
    raise ValueError("%s: not a CURVE certificate with a secret key (tq "
                     "keygen writes NAME.cert and NAME.cert_secret; give "
                     "either)" % path)


def client_keys(server_key=None, public=None, secret=None, cert=None):
    """(server, public, secret) Z85 strings for a client socket, or None for
    plain text. Like the C client, the environment ($TQ_CURVE_SERVER_KEY,
    $TQ_CURVE_CERT) stands in for what is not given; half a configuration
    is an error, not a wish for plain text."""
    def text(key):
        return key.decode("ascii") if isinstance(key, bytes) else key
    server_key, public, secret = text(server_key), text(public), text(secret)
    if not (server_key or public or secret or cert):
        server_key = os.environ.get("TQ_CURVE_SERVER_KEY") or None
        cert = os.environ.get("TQ_CURVE_CERT") or None
        if not (server_key or cert):
            return None
    if cert and (public or secret):
        raise ValueError("give curve_cert or curve_public_key and "
                         "curve_secret_key, not both")
    if cert:
        public, secret = key_pair(cert)
    if not (server_key and public and secret):
        raise ValueError("CURVE needs the broker's public key "
                         "(curve_server_key) and our own key pair "
                         "(curve_cert, or curve_public_key and "
                         "curve_secret_key)")
    server = public_key(server_key)
    for name, key in (("curve_public_key", public),
                      ("curve_secret_key", secret)):
        if not _is_z85(key):
            raise ValueError("%s: not 40 characters of Z85" % name)
    return server, public, secret
