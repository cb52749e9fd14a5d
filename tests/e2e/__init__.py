"""End-to-end tests: a local cluster of real containerd and peerpull nodes."""
