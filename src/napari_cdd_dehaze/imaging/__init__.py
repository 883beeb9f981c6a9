"""What the restore engine and training share below them: haze and rain synthesis, metrics, device choice."""
