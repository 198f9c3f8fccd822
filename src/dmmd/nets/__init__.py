"""Feature backbones phi(x, t): they return features and know nothing of kernels."""
