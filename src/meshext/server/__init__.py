"""`meshext serve`: the module server, the admin API and the control loop tying them together."""
