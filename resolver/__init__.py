"""fedns: a federation-aware authoritative DNS server for multi-cluster Kubernetes."""

__version__ = "0.1.0"
