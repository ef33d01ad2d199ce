"""deepmac."""
