"""EdgeFleet."""
