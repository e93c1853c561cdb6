"""MAE (He et al. 2022): masked autoencoder pretraining, the ViT classifier fine-tuned from it."""
