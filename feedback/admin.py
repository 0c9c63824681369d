"""Admin registrations of the domain models (added with the models)."""
