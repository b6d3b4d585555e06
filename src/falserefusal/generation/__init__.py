"""Getting answers: backends behind one Protocol, the generation cache, batch scheduling, GPU placement and the Generator."""
