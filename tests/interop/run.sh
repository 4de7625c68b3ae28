#!/usr/bin/env bash
# Interoperability with independent implementations of the public formats
# idvault emits (run by .ci/run; needs go with golang.org/x/mod):
#   - the audit log's signed checkpoint (C2SP signed-note + tlog-checkpoint)
#     and its tree, checked with Go's golang.org/x/mod/sumdb/{note,tlog};
#   - a digital ID (SD-JWT VC) presented with key binding, checked with the
#     IETF reference implementation (PyPI `sd-jwt`), and its entry in the
#     signed Token Status List read with jwcrypto and zlib, before and after
#     it is revoked;
#   - a consented release presented by a partner written with Python
#     grpcio, its signature checked with `cryptography` and its HPKE seal
#     opened with pyhpke;
#   - AuditService's inclusion and consistency proofs, asked for over mTLS
#     by a partner written with Python grpcio and checked with RFC 9162's
#     algorithms and the verifier key alone.
# Everything comes from a real vault started as the README starts it (dev
# defaults, SQLite, mTLS) on a free port, driven by the CLI and grpcio.
#
# usage: tests/interop/run.sh IDVAULT_BINARY PYTHON
# (PYTHON with the packages of tests/interop/requirements.txt)
set -euo pipefail
# The helpers import grpc_partner.py from here: no __pycache__ in the tree.
export PYTHONDONTWRITEBYTECODE=1
bin=$(realpath "$1")
# Absolute, but not through its links: a venv's python is a link to the
# base interpreter, which would lose the venv's packages.
case $2 in */*) python="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")" ;; *) python=$(command -v "$2") ;; esac
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
vault_pid=
cleanup() {
  status=$?
  [ -n "$vault_pid" ] && kill "$vault_pid" 2>/dev/null && wait "$vault_pid" 2>/dev/null || true
  if [ "$status" -ne 0 ] && [ -f "$work/serve.log" ]; then
    echo "--- the vault's log (last 40 lines):" >&2
    tail -40 "$work/serve.log" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
cd "$work"
d="$work/d"

"$bin" serve --dev --data-dir "$d" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 >serve.log 2>&1 &
vault_pid=$!
addr=
for _ in $(seq 1 100); do
  addr=$(sed -n 's/^idvault listening on \([0-9.:]*\) .*/\1/p' serve.log | head -1)
  [ -n "$addr" ] && break
  kill -0 "$vault_pid" 2>/dev/null || { cat serve.log; echo "FAIL: the vault did not start" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { cat serve.log; echo "FAIL: the vault did not say where it listens" >&2; exit 1; }
server="https://$addr"
partner() { "$bin" partner --data-dir "$d" --server "$server" "$@"; }
device() { "$bin" device --data-dir "$d" --server "$server" "$@"; }

# People, so the log holds create leaves of several sizes of tree.
subject=
for i in $(seq 1 11); do
  out=$(partner create-subject --field given_name="Ada$i" --field family_name=Lovelace \
    --field date_of_birth=1815-12-10 --field email="ada$i@example.org")
  [ -n "$subject" ] || subject=$(printf '%s\n' "$out" | sed -n 's/^subject_id=\([^ ]*\).*/\1/p')
done

# A digital ID, held by a phone key and presented to partner-a.
code=$(partner enrollment-code "$subject" | sed -n 's/^enrollment_code=\([^ ]*\).*/\1/p')
device keygen --out phone.key >/dev/null
device enroll --key phone.key --subject "$subject" --code "$code" >/dev/null
"$bin" issuer jwks --data-dir "$d" >jwks.json
device credential get --key phone.key --out id.sd-jwt --jwks jwks.json >/dev/null
audience=spiffe://idvault.dev/partner/partner-a
nonce=n-$(od -An -N9 -tx1 /dev/urandom | tr -d ' \n')
device credential present --key phone.key --credential id.sd-jwt \
  --disclose given_name,age_over_18 --audience "$audience" --nonce "$nonce" --out pres.txt >/dev/null
"$python" "$here/sdjwt_verify.py" jwks.json pres.txt "$audience" "$nonce" \
  '{"given_name": "Ada1", "age_over_18": true}'
# The same presentation for another audience, or with another nonce, must
# be refused, for that reason.
refused() { # EXPECTED_MESSAGE COMMAND...
  local want=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "FAIL: accepted: $*" >&2
    exit 1
  fi
  grep -qF "$want" <<<"$out" || { echo "$out" >&2; echo "FAIL: refused, but not with \"$want\": $*" >&2; exit 1; }
}
refused "Invalid audience in KB-JWT" "$python" "$here/sdjwt_verify.py" jwks.json pres.txt \
  spiffe://idvault.dev/partner/partner-b "$nonce" '{"given_name": "Ada1"}'
refused "Invalid nonce in KB-JWT" "$python" "$here/sdjwt_verify.py" jwks.json pres.txt \
  "$audience" "n-other" '{"given_name": "Ada1"}'


# A consented release, presented and opened by a grpcio partner with
# pyhpke: the phone signs a grant for two fields (the CLI), partner-a
# presents it.
challenge=$(partner challenge "$subject" | sed -n 's/^challenge=\([0-9a-f]*\).*/\1/p')
device sign-consent --key phone.key --subject "$subject" --audience "$audience" \
  --purpose kyc --field given_name --field email --challenge "$challenge" --out consent.pb >/dev/null
"$python" "$here/release_open.py" "$here/../../proto/proto" "$d/tls" "$addr" consent.pb \
  "$d/tls/vault.release.pub" '{"given_name": "Ada1", "email": "ada1@example.org"}'

# Its status list entry, read as a relying party does: valid, then
# invalid once the phone revokes it.
partner status-list --jwks jwks.json --out status-1.jwt >/dev/null
"$python" "$here/status_list_check.py" jwks.json status-1.jwt id.sd-jwt valid
device credential revoke --key phone.key --credential id.sd-jwt >/dev/null
partner status-list --jwks jwks.json --out status-2.jwt >/dev/null
"$python" "$here/status_list_check.py" jwks.json status-2.jwt id.sd-jwt invalid

# The audit log: wait until every leaf is in a signed checkpoint, keep it
# as a partner does, then check it and the stored leaves with Go.
"$bin" audit public-key --data-dir "$d" >audit.pub
written=$("$python" - "$d/idvault.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(c.execute("SELECT count(*) FROM audit_log").fetchone()[0])
PY
)
size=0
for _ in $(seq 1 50); do
  partner audit-check --public-key audit.pub --state checkpoint >/dev/null
  size=$(sed -n 2p checkpoint)
  [ "$size" -ge "$written" ] && break
  sleep 0.2
done
[ "$size" -ge "$written" ] || { echo "FAIL: $written leaves written, the newest checkpoint holds $size" >&2; exit 1; }
"$python" - "$d/idvault.db" "$size" >leaves.hex <<'PY'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
for (leaf,) in c.execute("SELECT leaf FROM audit_log WHERE idx < ? ORDER BY idx", (int(sys.argv[2]),)):
    print(bytes(leaf).hex())
PY
# Debian's golang-golang-x-mod-dev, in GOPATH mode (nothing is downloaded).
go_check() {
  (cd "$here" && GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOPROXY=off \
    go run checkpoint.go "$work/audit.pub" "$work/checkpoint" "$1")
}
go_check "$work/leaves.hex"
# A partner written with grpcio proves its own requests are in the log.
"$python" "$here/audit_proofs.py" "$here/../../proto/proto" "$d/tls" "$addr" audit.pub

# A leaf changed after it was checkpointed must not pass.
"$python" - leaves.hex <<'PY'
import sys
lines = open(sys.argv[1]).read().split()
lines[len(lines) // 2] = lines[len(lines) // 2][:-2] + ("00" if not lines[len(lines) // 2].endswith("00") else "01")
open(sys.argv[1] + ".edited", "w").write("\n".join(lines) + "\n")
PY
refused "the leaves do not hash to the signed root" go_check "$work/leaves.hex.edited"
echo "interop: ok"
