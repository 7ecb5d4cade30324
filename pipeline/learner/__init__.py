"""The learner: the MLP, its loss, augmentation and the training loop with its resume state."""
