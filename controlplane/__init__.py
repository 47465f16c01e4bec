"""ShiftDesk control plane: golden images -> pools of linked-clone desktops on libvirt."""
