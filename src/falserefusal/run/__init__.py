"""One run for all front ends: options, config, prepare, the Run (families, gates decided once), results, summary."""
