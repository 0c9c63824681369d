"""HTTP views: parse input, scope lookups to the user, call a service, render."""
