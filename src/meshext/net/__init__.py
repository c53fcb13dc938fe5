"""Network policy shared by everything meshext fetches from other hosts."""
