"""Generated protobuf and gRPC modules for the containerd API subset peerpull uses."""
