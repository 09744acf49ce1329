"""What runs on a host, in rooms by concern: engine → drivers → block → hostio."""
