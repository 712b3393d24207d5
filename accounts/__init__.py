"""Operator logins: lockouts, the TOTP second factor and its login step."""
