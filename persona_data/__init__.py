"""The shipped persona content (specs, conversations, evaluation sets); see README.md here."""
