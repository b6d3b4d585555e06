"""What a run asks: personas and phrasings, tasks with items and paraphrases, the seeded sampler of request blocks."""
