"""Reads a digital ID's entry in its Token Status List
(draft-ietf-oauth-status-list) the way a relying party's own code would:
the token's signature checked with jwcrypto against the issuer's JWK Set,
`lst` inflated with zlib, the entry's bit read least significant bit first.

usage: status_list_check.py JWKS_FILE STATUS_TOKEN_FILE CREDENTIAL_FILE valid|invalid"""
import base64
import json
import sys
import zlib

from jwcrypto.jwk import JWKSet
from jwcrypto.jws import JWS

jwks_file, token_file, credential_file, expected = sys.argv[1:5]
keys = JWKSet.from_json(open(jwks_file).read())


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


token = open(token_file).read().strip()
header = json.loads(b64d(token.split(".")[0]))
assert header["typ"] == "statuslist+jwt" and header["alg"] == "ES256", header
jws = JWS()
jws.deserialize(token)
jws.verify(keys.get_key(header["kid"]))
payload = json.loads(jws.payload)

issuer_jwt = open(credential_file).read().strip().split("~")[0]
status = json.loads(b64d(issuer_jwt.split(".")[1]))["status"]["status_list"]
assert payload["sub"] == status["uri"], (payload["sub"], status["uri"])
assert payload["status_list"]["bits"] == 1
entries = zlib.decompress(b64d(payload["status_list"]["lst"]))
idx = status["idx"]
bit = (entries[idx // 8] >> (idx % 8)) & 1
assert bit == {"valid": 0, "invalid": 1}[expected], (idx, bit, expected)
print(f"status list {payload['sub']}: entry {idx} of {len(entries) * 8} is {expected}")
