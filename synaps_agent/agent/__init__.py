"""The Bayesian-optimization agent: surrogate, acquisition, candidates, safety, stopping."""
