"""Data sources and the order in which the training loop reads them."""
