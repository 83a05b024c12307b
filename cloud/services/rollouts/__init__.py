"""Staged rollouts: policy, state tables, pacing, gates and the sequential test that judges them."""
