"""The embedded world: concept corpus, word-level tokenizer, tiny model with planted massive activations, SAE
zoo."""
