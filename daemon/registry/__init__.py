"""The pull-only OCI Distribution API that the local containerd talks to."""
