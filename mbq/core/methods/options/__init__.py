"""Per-method option classes (torch-free pydantic models)."""
