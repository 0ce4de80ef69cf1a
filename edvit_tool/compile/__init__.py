"""compile: from a trained timm ViT and a dataset to a build directory (DESIGN §2), one module per stage."""
