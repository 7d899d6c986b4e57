"""Reading data sets, tokenizing them once into a checked cache, batching by length: the DataModule and what
the inference API shares with it (`batching`, `texts`). Nothing is imported here, so `agnews.data.batching` stays
light."""
