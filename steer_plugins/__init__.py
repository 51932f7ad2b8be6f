"""STEER decoding engine: contrastive expert guidance and negative prompting (arXiv 2308.07645)."""
