"""Active Directory over LDAP (ldap3)."""
