"""Step 1, the model: its shape (spec), synthetic weights (synth) and the prompt sets (prompts)."""
