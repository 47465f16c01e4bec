"""Map libvirt's error codes to what the reconciler should do next."""

from __future__ import annotations

import libvirt

from controlplane.errors import PermanentError, TemporaryError

NOT_FOUND = {libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL}
TRANSIENT = {
    libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_OPERATION_TIMEOUT,
    libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
    libvirt.VIR_ERR_NO_CONNECT,
    libvirt.VIR_ERR_INTERNAL_ERROR,
}


def is_not_found(err: libvirt.libvirtError) -> bool:
    return err.get_error_code() in NOT_FOUND


def translate(err: libvirt.libvirtError, doing: str) -> Exception:
    """A TemporaryError for hiccups worth retrying, a PermanentError for everything else."""
    message = f"{doing}: {err.get_error_message()}"
    if err.get_error_code() in TRANSIENT:
        return TemporaryError(message, delay=2.0)
    return PermanentError(message)
