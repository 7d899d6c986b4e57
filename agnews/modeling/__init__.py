"""The classifier: encoders and tokenizers (`backbone`), pooling heads, the LightningModule, its optimizer, and
the run-time fast paths that keep its results (`fast_paths`)."""
