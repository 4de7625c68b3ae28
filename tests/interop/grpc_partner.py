"""What the grpcio partners of tests/interop share: idvault's protos
compiled with grpcio-tools into a temporary directory (removed at exit),
and an mTLS channel under a dev partner's certificate."""
import atexit
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

_generated = tempfile.TemporaryDirectory()
atexit.register(_generated.cleanup)


def compile_protos(proto_dir, names):
    """Compiles idvault/v1/NAME.proto for each name and makes the modules
    importable as `idvault.v1.NAME_pb2` / `NAME_pb2_grpc`."""
    for name in names:
        rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={_generated.name}",
                          f"--grpc_python_out={_generated.name}", f"idvault/v1/{name}.proto"])
        assert rc == 0, f"protoc failed on {name}.proto"
    if _generated.name not in sys.path:
        sys.path.insert(0, _generated.name)


def tls_file(tls_dir, name):
    with open(os.path.join(tls_dir, name), "rb") as f:
        return f.read()


def channel(tls_dir, addr, partner):
    """mTLS to the vault at `addr` as `partner` (DIR/tls/PARTNER.crt and .key),
    the server verified against the dev CA under the name `localhost`."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls_file(tls_dir, "ca.crt"),
        private_key=tls_file(tls_dir, f"{partner}.key"),
        certificate_chain=tls_file(tls_dir, f"{partner}.crt"),
    )
    return grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
