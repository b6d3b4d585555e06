"""Getting answers: backends behind one Protocol, generation cache, batch scheduling, GPU placement, Generator."""
