"""What a run asks: personas and their phrasings, tasks with items and paraphrases, and the seeded sampler of request blocks."""
