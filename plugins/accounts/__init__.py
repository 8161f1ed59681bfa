"""accounts: the account pool's lifecycle — OAuth login, import/export, token refresh, usage."""
