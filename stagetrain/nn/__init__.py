"""What happens to a model: objectives and their registry, optimizers, FLOP accounting, the typed growth ops and stage helpers, auxiliary heads, a spec read from a file checked as data."""
