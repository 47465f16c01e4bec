"""libvirt-python driver: typed domain XML, linked clones, error mapping."""
