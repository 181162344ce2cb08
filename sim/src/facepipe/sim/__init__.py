"""A Kubernetes API emulator (KMock) to run and test the operator without a cluster."""
