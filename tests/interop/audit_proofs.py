"""A partner written with Python grpcio (not idvault's client) checks the
audit log over mTLS, with an RFC 9162 verifier of its own and the verifier
key alone: each of its CreateSubject calls, named by the request id the
response carried, is proven included in a signed checkpoint, and the newer
checkpoint is proven to extend the one it saw before the calls. A proof
with one hash changed, and another partner's request, must fail.

usage: audit_proofs.py PROTO_DIR TLS_DIR HOST:PORT VERIFIER_KEY_FILE"""
import base64
import hashlib
import sys
import time

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import grpc_partner
from grpc_partner import compile_protos

proto_dir, tls_dir, addr, vkey_file = sys.argv[1:5]
vkey = open(vkey_file).read().strip()

compile_protos(proto_dir, ("audit", "subjects"))
from idvault.v1 import audit_pb2, audit_pb2_grpc, subjects_pb2, subjects_pb2_grpc  # noqa: E402


def channel(partner):
    return grpc_partner.channel(tls_dir, addr, partner)


def sha256(*parts):
    return hashlib.sha256(b"".join(parts)).digest()


def node(left, right):
    return sha256(b"\x01", left, right)


def open_checkpoint(note):
    """C2SP signed-note + tlog-checkpoint, verified with the key alone."""
    name, key_id, key64 = vkey.split("+", 2)
    material = base64.b64decode(key64, validate=True)
    assert material[0] == 1 and len(material) == 33
    assert sha256(name.encode(), b"\n", material)[:4].hex() == key_id
    cut = note.rindex("\n\n")
    text, sigs = note[: cut + 1], note[cut + 2:]
    signed = False
    for line in sigs.splitlines():
        assert line.startswith("\u2014 "), line
        sig_name, b64 = line[2:].split(" ", 1)
        raw = base64.b64decode(b64, validate=True)
        if sig_name == name and raw[:4].hex() == key_id:
            Ed25519PublicKey.from_public_bytes(material[1:]).verify(raw[4:], text.encode())
            signed = True
    assert signed, "no signature by the pinned key"
    origin, size, root = text.split("\n")[:3]
    assert origin == name
    return int(size), base64.b64decode(root, validate=True)


def verify_inclusion(index, size, leaf_hash, proof, root):  # RFC 9162 2.1.3.2
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old, new, old_root, new_root, proof):  # RFC 9162 2.1.4.2
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof
    if old > new or not proof:
        return False
    if old & (old - 1) == 0:
        proof = [old_root] + list(proof)
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


# Every call is bounded: a vault that stops answering fails the run.
TIMEOUT = 10

audit = audit_pb2_grpc.AuditServiceStub(channel("partner-a"))
subjects = subjects_pb2_grpc.SubjectServiceStub(channel("partner-a"))

first = audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=TIMEOUT)
old_size, old_root = open_checkpoint(first.note)
assert (old_size, old_root) == (first.tree_size, first.root_hash)

request_ids = []
for i in range(5):
    _, call = subjects.CreateSubject.with_call(subjects_pb2.CreateSubjectRequest(fields=[
        subjects_pb2.Field(name="given_name", value=f"Grace{i}"),
        subjects_pb2.Field(name="family_name", value="Hopper"),
    ]), timeout=TIMEOUT)
    rid = dict(call.initial_metadata()).get("idvault-request-id")
    assert rid and len(rid) == 32, call.initial_metadata()
    request_ids.append(rid)

deadline = time.time() + 20
while True:
    newest = audit.GetCheckpoint(audit_pb2.GetCheckpointRequest(), timeout=TIMEOUT)
    size, root = open_checkpoint(newest.note)
    if size >= old_size + len(request_ids):
        break
    assert time.time() < deadline, "the calls were not checkpointed within 20 s"
    time.sleep(0.2)

for rid in request_ids:
    p = audit.GetInclusionProof(audit_pb2.GetInclusionProofRequest(request_id=rid, tree_size=size), timeout=TIMEOUT)
    assert p.tree_size == size and open_checkpoint(p.checkpoint) == (size, root)
    assert bytes.fromhex(rid) in p.leaf, "the leaf carries the request id"
    leaf_hash = sha256(b"\x00", p.leaf)
    assert verify_inclusion(p.leaf_index, size, leaf_hash, list(p.hashes), root), rid
    if p.hashes:
        bad = list(p.hashes)
        bad[0] = bytes([bad[0][0] ^ 1]) + bad[0][1:]
        assert not verify_inclusion(p.leaf_index, size, leaf_hash, bad, root)

c = audit.GetConsistencyProof(audit_pb2.GetConsistencyProofRequest(old_size=old_size, new_size=size), timeout=TIMEOUT)
assert open_checkpoint(c.checkpoint) == (size, root)
assert verify_consistency(old_size, size, old_root, root, list(c.hashes)), "consistency"
if old_size > 0 and c.hashes:
    bad = list(c.hashes)
    bad[-1] = bytes([bad[-1][0] ^ 1]) + bad[-1][1:]
    assert not verify_consistency(old_size, size, old_root, root, bad)

# Another partner cannot have partner-a's leaves proven to it.
other = audit_pb2_grpc.AuditServiceStub(channel("partner-b"))
try:
    other.GetInclusionProof(audit_pb2.GetInclusionProofRequest(request_id=request_ids[0]),
                            timeout=TIMEOUT)
    raise AssertionError("partner-b was given partner-a's leaf")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e

print(f"grpcio partner: {len(request_ids)} requests proven included in checkpoint {size}; "
      f"consistency {old_size} -> {size} verified")
