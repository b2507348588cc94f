"""Recommenders: RIB and the paper's baselines share one evaluation path."""
