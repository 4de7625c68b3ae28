"""A partner written with Python grpcio presents a consent the phone signed
(`idvault device sign-consent`) and opens the release with its own code:
the vault's Ed25519 release signature checked with `cryptography` against
the pinned keys (docs/consent.md, "Release signature"), then the HPKE
ciphertext opened with pyhpke (RFC 9180: base mode, DHKEM(P-256), HKDF-SHA256,
AES-256-GCM), with the aad rebuilt from the consent and subject ids. A
release opened under another subject's aad, or with a signature over
another nonce, must fail. It also opens the worked example of
docs/consent.md ("Release seal").

usage: release_open.py PROTO_DIR TLS_DIR HOST:PORT SIGNED_CONSENT_FILE VAULT_RELEASE_PUB EXPECTED_JSON"""
import json
import os
import struct
import sys
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey
from pyhpke.exceptions import OpenError

from grpc_partner import channel, compile_protos, tls_file

proto_dir, tls_dir, addr, consent_file, vault_pub_file, expected = sys.argv[1:7]
expected = json.loads(expected)
SUITE = CipherSuite.new(KEMId.DHKEM_P256_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.AES256_GCM)
INFO = b"idvault/v1/release"


def hpke_open(private_key, enc, ciphertext, aad):
    ctx = SUITE.create_recipient_context(enc, KEMKey.from_pyca_cryptography_key(private_key), info=INFO)
    return ctx.open(ciphertext, aad=aad)


# The worked example of docs/consent.md.
doc_key = ec.derive_private_key(int.from_bytes(bytes([2] * 32), "big"), ec.SECP256R1())
doc_plain = hpke_open(
    doc_key,
    bytes.fromhex("04d93c1e7accd3e5e7f975c204a420c269e75ae1cdd7c9272e9764f49fa5a7d9a96a340c2555220402f66b4ec409f0cf904e9ba492a7151a7c412d421efba0b27a"),
    bytes.fromhex("9832c71c4f87832ad95f680b9965b937318531630aa07a779b04da1acb4ea1f4fd2a096e06b7de4249031f9925b7099178d6251a8cd01e9f40daf7e71ade5f22d7d70611398c10"),
    bytes.fromhex("000102030405060708090a0b0c0d0e0f6f1c2b9e8a414d3c9b7e2a5f0c1d3e4f"),
)
assert doc_plain.hex() == (
    "0a1e0a05656d61696c1215616d656c69652e6f6c406578616d706c652e6f72670a150a0a676976656e5f"
    "6e616d651207416dc3a96c6965"
), doc_plain.hex()

compile_protos(proto_dir, ("consent", "subjects", "credentials", "events", "transactions"))
from idvault.v1 import consent_pb2, consent_pb2_grpc  # noqa: E402

signed = consent_pb2.SignedConsent()
signed.ParseFromString(open(consent_file, "rb").read())
nonce = os.urandom(16)
r = consent_pb2_grpc.ConsentServiceStub(channel(tls_dir, addr, "partner-a")).Release(
    consent_pb2.ReleaseRequest(signed=signed, nonce=nonce), timeout=10
)


def signed_bytes(nonce):
    def short(b):
        return struct.pack(">H", len(b)) + b
    return (b"idvault/v1/release-signature\x00" + r.consent_id + uuid.UUID(r.subject_id).bytes
            + r.grant_hash + short(nonce) + short(r.receipt_id.encode()) + short(r.enc)
            + struct.pack(">I", len(r.ciphertext)) + r.ciphertext)

keys = [Ed25519PublicKey.from_public_bytes(bytes.fromhex(line.strip()))
        for line in open(vault_pub_file) if line.strip() and not line.startswith("#")]


def verifies(nonce):
    for k in keys:
        try:
            k.verify(r.signature, signed_bytes(nonce))
            return True
        except InvalidSignature:
            pass
    return False

assert verifies(nonce), "the release signature does not verify under the pinned keys"
assert not verifies(os.urandom(16)), "the signature does not bind the request's nonce"
partner_key = load_pem_private_key(tls_file(tls_dir, "partner-a.release.key"), password=None)
aad = r.consent_id + uuid.UUID(r.subject_id).bytes
fields = consent_pb2.ReleasedFields()
fields.ParseFromString(hpke_open(partner_key, r.enc, r.ciphertext, aad))
got = {f.name: f.value for f in fields.fields}
assert got == expected, (got, expected)
try:
    hpke_open(partner_key, r.enc, r.ciphertext, r.consent_id + uuid.uuid4().bytes)
    raise AssertionError("the release opened under another subject's aad")
except OpenError:
    pass
print(f"grpcio partner: release signed by the vault, opened with pyhpke: {sorted(got)}; "
      "docs/consent.md's worked example opens too")
