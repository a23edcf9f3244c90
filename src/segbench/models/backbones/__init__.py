"""Feature extractors shared by several segmentation models (ResNet, VAN, MobileNet)."""
