"""The embedded control plane: directory, rebalancer and move orchestration."""
