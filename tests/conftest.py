"""Shared test settings: deterministic hypothesis runs (CI reproducibility), small CPU thread pool."""

import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", derandomize=True, deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# tiny models run fastest single-threaded; the real-model tests raise this themselves
torch.set_num_threads(1)
