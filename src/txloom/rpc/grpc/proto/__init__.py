"""Generated protobuf and gRPC modules of the aperture reverse-RPC wire (see ``regen.sh``)."""
