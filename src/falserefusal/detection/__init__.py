"""Reading answers: the refusal rules, the learned three-outcome layer, and the detector audit files."""
