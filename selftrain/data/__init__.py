"""Pure transforms from interactions and feedback to training examples."""
