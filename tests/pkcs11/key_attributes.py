"""Reads the private keys of a PKCS#11 token with PyKCS11, a client meshroot does not share code
with, and prints what would let a key out: CKA_EXTRACTABLE, CKA_SENSITIVE, CKA_NEVER_EXTRACTABLE,
CKA_ALWAYS_SENSITIVE, and whether asking for CKA_VALUE (the private key itself) is refused.

Usage: key_attributes.py MODULE TOKEN_LABEL PIN_FILE  (SOFTHSM2_CONF in the environment)
Prints one JSON object per private key, by label.
"""
import json
import sys

import PyKCS11

module, token_label, pin_file = sys.argv[1:4]
lib = PyKCS11.PyKCS11Lib()
lib.load(module)
slot = next(
    s for s in lib.getSlotList(tokenPresent=True) if lib.getTokenInfo(s).label.strip() == token_label
)
session = lib.openSession(slot)
session.login(open(pin_file).read().strip())
keys = {}
for key in session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY)]):
    label, extractable, sensitive, never_extractable, always_sensitive = session.getAttributeValue(
        key,
        [
            PyKCS11.CKA_LABEL,
            PyKCS11.CKA_EXTRACTABLE,
            PyKCS11.CKA_SENSITIVE,
            PyKCS11.CKA_NEVER_EXTRACTABLE,
            PyKCS11.CKA_ALWAYS_SENSITIVE,
        ],
    )
    # PyKCS11 answers None for an attribute the token will not reveal (CKR_ATTRIBUTE_SENSITIVE).
    try:
        (secret,) = session.getAttributeValue(key, [PyKCS11.CKA_VALUE])
        value = "withheld" if secret is None else "readable"
    except PyKCS11.PyKCS11Error as error:
        value = PyKCS11.CKR[error.value]
    keys[label] = {
        "extractable": bool(extractable),
        "sensitive": bool(sensitive),
        "never_extractable": bool(never_extractable),
        "always_sensitive": bool(always_sensitive),
        "value": value,
    }
session.logout()
print(json.dumps(keys, sort_keys=True))
