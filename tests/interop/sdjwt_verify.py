"""Verifies an idvault SD-JWT VC presentation with the IETF reference
implementation (PyPI `sd-jwt`, openwallet-foundation-labs/sd-jwt-python),
against the issuer's JWK Set as `idvault issuer jwks` prints it.

usage: sdjwt_verify.py JWKS_FILE PRESENTATION_FILE AUDIENCE NONCE EXPECTED_JSON

Exits non-zero unless the library accepts the presentation and the
verified claims include every EXPECTED_JSON claim with its value (and no
claim the holder did not disclose, of those the issuer can disclose)."""
import json
import sys

from jwcrypto.jwk import JWKSet
from sd_jwt.verifier import SDJWTVerifier

jwks_file, pres_file, audience, nonce, expected = sys.argv[1:6]
keys = JWKSet.from_json(open(jwks_file).read())
presentation = open(pres_file).read().strip()
expected = json.loads(expected)
seen_issuer = []


def issuer_key(issuer, header):
    seen_issuer.append(issuer)
    return keys.get_key(header["kid"])


payload = SDJWTVerifier(
    presentation, issuer_key, audience, nonce, serialization_format="compact"
).get_verified_payload()
for claim, value in expected.items():
    assert payload.get(claim) == value, (claim, payload.get(claim), value)
undisclosed = {"given_name", "family_name", "birthdate", "email"} - set(expected)
leaked = undisclosed & set(payload)
assert not leaked, f"claims not disclosed appear: {sorted(leaked)}"
assert "cnf" in payload and seen_issuer, payload
print(f"sd-jwt reference implementation: presentation verifies; claims {sorted(expected)}")
