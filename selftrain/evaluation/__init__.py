"""Running generated code safely and measuring how well models do."""
