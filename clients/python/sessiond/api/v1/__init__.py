"""Generated protobuf and gRPC stubs of the sessiond v1 API."""
