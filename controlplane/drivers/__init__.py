"""The only code that talks to libvirt (and later LDAP and the firewall). Implements domain.ports."""
