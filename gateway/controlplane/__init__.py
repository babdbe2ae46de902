"""The embedded control plane: directory, planner, move orchestration, control endpoint."""
