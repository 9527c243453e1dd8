"""Integrations that take a run's results to other tools: FiftyOne, Label Studio, CVAT."""
