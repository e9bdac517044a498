#!/bin/sh
# Regenerate the checked-in protobuf and gRPC modules of the aperture reverse-RPC wire.
#
#   python -m venv /tmp/protoc && /tmp/protoc/bin/pip install grpcio-tools
#   PYTHON=/tmp/protoc/bin/python sh src/txloom/rpc/grpc/proto/regen.sh
#
# Generated code is committed so that neither installs nor tests need grpcio-tools. The
# gRPC module imports its messages by their package-relative name, which is rewritten to
# the installed package path.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python}
common=$("$python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
gapis=$("$python" -c 'import google.rpc, os; print(os.path.dirname(os.path.dirname(list(google.rpc.__path__)[0])))')
cd "$here"
"$python" -m grpc_tools.protoc -I . -I "$common" -I "$gapis" \
    --python_out=. --pyi_out=. --grpc_python_out=. aperture/rpc/v1/rpc.proto
sed -i 's/^from aperture\.rpc\.v1 import rpc_pb2/from txloom.rpc.grpc.proto.aperture.rpc.v1 import rpc_pb2/' \
    aperture/rpc/v1/rpc_pb2_grpc.py
