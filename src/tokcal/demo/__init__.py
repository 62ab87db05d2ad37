"""The embedded demo: a tiny KJV-trained GPT-2, its training script and the demo corpora."""
