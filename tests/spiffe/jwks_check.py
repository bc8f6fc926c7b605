"""Reads a SPIFFE bundle document with parsers nobody here wrote: PyJWT's JWK Set reader for
each key's parameters, pyca/cryptography for each x5c certificate, and checks that they are
the same key (as go-jose does), that each x509-svid key holds one CA certificate (as Istio's
fetcher does), and prints a JSON summary: {"certificates": [sha256 hex...], "sequence": N}.

usage: jwks_check.py BUNDLE_FILE
Exits 1 with the reason on the first rule broken.
"""

import base64
import hashlib
import json
import sys

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def fail(message):
    print(f"INVALID {message}")
    sys.exit(1)


def main():
    with open(sys.argv[1], "rb") as handle:
        document = json.load(handle)
    digests = []
    for index, key in enumerate(document.get("keys", [])):
        if key.get("use") != "x509-svid":
            continue
        if len(key.get("x5c", [])) != 1:
            fail(f"key {index}: expected 1 certificate in x5c")
        der = base64.b64decode(key["x5c"][0], validate=True)
        certificate = x509.load_der_x509_certificate(der)
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        if not constraints.ca:
            fail(f"key {index}: not a CA certificate")
        jwk_key = jwt.PyJWK.from_dict({k: v for k, v in key.items() if k != "x5c"}).key
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if jwk_key.public_bytes(*spki) != certificate.public_key().public_bytes(*spki):
            fail(f"key {index}: the JWK's parameters are not the certificate's key")
        digests.append(hashlib.sha256(der).hexdigest())
    if not digests:
        fail("no x509-svid key")
    print(json.dumps({"certificates": digests, "sequence": document.get("spiffe_sequence")}))


if __name__ == "__main__":
    main()
