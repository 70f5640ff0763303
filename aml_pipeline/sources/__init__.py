"""Source adapters: each maps one real format onto the canonical transaction schema."""
